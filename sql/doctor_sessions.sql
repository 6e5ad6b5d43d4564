-- doctor: client sessions (any database) with a transaction open longer than <long> seconds, or idle in one
-- longer than <idle> seconds; the doctor's own sessions left out. Query text: whitespace folded, 80 characters.
-- Sessions of other roles show no state unless the role has pg_read_all_stats: `hidden` counts them.
SELECT a.pid,
       coalesce(a.datname::text, '') AS datname,
       coalesce(a.usename::text, '') AS usename,
       coalesce(a.state, '') AS state,
       extract(epoch FROM now() - a.xact_start)::float8 AS xact_seconds,
       extract(epoch FROM now() - a.state_change)::float8 AS state_seconds,
       left(regexp_replace(coalesce(a.query, ''), '\s+', ' ', 'g'), 80) AS query,
       false AS hidden
  FROM pg_catalog.pg_stat_activity a
 WHERE a.backend_type = 'client backend'
   AND a.pid <> ALL (%(own)s::int[])
   AND a.xact_start IS NOT NULL
   AND (a.xact_start < now() - make_interval(secs => %(long)s)
        OR (a.state LIKE 'idle in transaction%%' AND a.state_change < now() - make_interval(secs => %(idle)s)))
UNION ALL
SELECT a.pid, coalesce(a.datname::text, ''), coalesce(a.usename::text, ''), '', NULL, NULL, '', true
  FROM pg_catalog.pg_stat_activity a
 WHERE a.query = '<insufficient privilege>' AND a.usesysid IS NOT NULL AND a.pid <> ALL (%(own)s::int[])
 ORDER BY xact_seconds DESC NULLS LAST
