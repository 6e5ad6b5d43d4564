SELECT job, client, started_at, updated_at, extract(epoch FROM now() - updated_at)::float8 AS age_seconds,
       phase, done, total, rows_per_second, pace, held_by
  FROM {jobs}
 WHERE migration = %(migration)s
 ORDER BY started_at
