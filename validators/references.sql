-- One branch per [[references]] table. contract re-points their foreign keys at the base table, and that FK
-- cannot be validated while a referencing row points at a key the base table lacks. Keys in quarantine are
-- left out here (the quarantine summary counts the rows pointing at them: they block contract too).
SELECT r.{column}::text AS key, 'references' AS check,
       count(*) || ' row(s) of ' || {reference_name} || ' point at it but ' || {base_name} || ' has no such row'
       || CASE WHEN EXISTS (SELECT 1 FROM {legacy} AS l WHERE l.{pk} = r.{column}) THEN ''
               ELSE ' (nor ' || {legacy_name} || ': a dangling reference)' END AS detail
  FROM {reference} AS r
 WHERE {scope}
   AND r.{column} IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM {base} AS b WHERE b.{pk} = r.{column} AND {base_scope})
   AND {not_quarantined}
 GROUP BY r.{column}
