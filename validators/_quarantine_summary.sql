SELECT q.key, q.sqlstate, q.message, q.source, q.accepted_at IS NOT NULL AS accepted
  FROM {quarantine} AS q
 WHERE q.migration = %(migration)s AND q.resolved_at IS NULL
 ORDER BY q.first_seen, q.key
