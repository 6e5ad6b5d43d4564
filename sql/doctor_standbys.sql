-- doctor: standbys streaming from this server and how far behind they replay. Without pg_monitor (or
-- pg_read_all_stats) the LSN and lag columns of other roles' senders read NULL.
SELECT coalesce(r.application_name, '') AS name,
       coalesce(host(r.client_addr), 'local') AS client,
       coalesce(r.state, '') AS state,
       extract(epoch FROM r.replay_lag)::float8 AS replay_seconds,
       CASE WHEN r.replay_lsn IS NOT NULL THEN pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint END
           AS replay_bytes
  FROM pg_catalog.pg_stat_replication r
 ORDER BY 1
