-- Legacy rows with no base row that are not in quarantine either: a write the sync lost, or rows the backfill
-- never reached.
SELECT l.{pk}::text AS key, 'legacy_missing' AS check,
       'no row in ' || {base_name} || ' and not quarantined' AS detail
  FROM {legacy} AS l
 WHERE {scope}
   AND NOT EXISTS (SELECT 1 FROM {base} AS b WHERE b.{pk} = l.{pk} AND {base_scope})
   AND NOT EXISTS (SELECT 1 FROM {quarantine} AS q
                    WHERE q.migration = %(migration)s AND q.key = l.{pk}::text AND q.resolved_at IS NULL)
