WITH l AS ({legacy}), s AS ({split}),
     q AS (SELECT key FROM {quarantine} WHERE migration = %(migration)s AND resolved_at IS NULL)
SELECT 'legacy_only' AS side, x.{pk} AS key FROM (SELECT * FROM l EXCEPT SELECT * FROM s) AS x
 WHERE x.{pk}::text NOT IN (SELECT key FROM q)
UNION ALL
SELECT 'split_only', y.{pk} FROM (SELECT * FROM s EXCEPT SELECT * FROM l) AS y
 WHERE y.{pk}::text NOT IN (SELECT key FROM q)
ORDER BY 2, 1
LIMIT %(limit)s
