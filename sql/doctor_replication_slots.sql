-- doctor: replication slots and the WAL each one keeps on the primary's disk.
SELECT s.slot_name::text AS name,
       s.slot_type AS type,
       s.active,
       coalesce(s.database::text, '') AS database,
       coalesce(s.wal_status, '') AS wal_status,
       CASE WHEN NOT pg_is_in_recovery() AND s.restart_lsn IS NOT NULL
            THEN pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint END AS retained_bytes
  FROM pg_catalog.pg_replication_slots s
 ORDER BY s.slot_name
