-- doctor: the server and the migration role (the session's own user), in one row.
-- data_directory is readable only with pg_read_all_settings; the CASE keeps current_setting from raising.
SELECT current_setting('server_version') AS version,
       pg_is_in_recovery() AS standby,
       current_setting('wal_level') AS wal_level,
       current_user::text AS role,
       r.rolsuper AS superuser,
       r.rolbypassrls AS bypassrls,
       current_database()::text AS database,
       has_database_privilege(current_database(), 'CREATE') AS create_db,
       pg_backend_pid() AS pid,
       inet_client_port() AS client_port,
       CASE WHEN pg_has_role('pg_read_all_settings', 'USAGE') THEN current_setting('data_directory') END AS data_directory,
       extract(epoch FROM pg_postmaster_start_time())::bigint AS started
  FROM pg_roles r
 WHERE r.rolname = current_user
