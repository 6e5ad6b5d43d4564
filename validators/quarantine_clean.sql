-- A quarantined key must have no split rows: the trigger removes them when it quarantines, so the split side
-- never shows a stale version of a row the split schema rejects.
SELECT b.{pk}::text AS key, 'quarantine_clean' AS check,
       'quarantined (' || q.sqlstate || ') but ' || {base_name} || ' still has its row' AS detail
  FROM {base} AS b
  JOIN {quarantine} AS q ON q.migration = %(migration)s AND q.key = b.{pk}::text AND q.resolved_at IS NULL
 WHERE {scope}
