-- Base rows whose legacy row is gone: a delete the sync missed. After switch-reads the application would show it.
SELECT b.{pk}::text AS key, 'split_extra' AS check,
       {base_name} || ' has a row that ' || {legacy_name} || ' does not' AS detail
  FROM {base} AS b
 WHERE {scope}
   AND NOT EXISTS (SELECT 1 FROM {legacy} AS l WHERE l.{pk} = b.{pk} AND {legacy_scope})
