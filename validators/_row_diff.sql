-- The rows of one key range (or key list) on which the two legacy-shaped SELECTs of views.py disagree, read in
-- one statement, with a flag and both values (as text) per column. Open quarantine keys are left out: the
-- quarantine summary reports them.
WITH l AS (
    SELECT * FROM ({legacy}) AS x WHERE {legacy_scope}
), s AS (
    SELECT * FROM ({split}) AS y WHERE {split_scope}
)
SELECT coalesce(l.{pk}, s.{pk})::text AS key,
       l.{pk} IS NOT NULL AS in_legacy,
       s.{pk} IS NOT NULL AS in_split,
       ARRAY[{differs}] AS differs,
       ARRAY[{legacy_values}]::text[] AS legacy_values,
       ARRAY[{split_values}]::text[] AS split_values
  FROM l
  FULL JOIN s ON s.{pk} = l.{pk}
 WHERE (l.{pk} IS NULL OR s.{pk} IS NULL OR {any_differs})
   AND NOT EXISTS (SELECT 1 FROM {quarantine} AS q
                    WHERE q.migration = %(migration)s AND q.resolved_at IS NULL
                      AND q.key = coalesce(l.{pk}, s.{pk})::text)
 ORDER BY coalesce(l.{pk}, s.{pk})
