WITH candidate AS (
    SELECT r.range_no FROM {ranges} AS r
     WHERE r.migration = %(migration)s AND r.status <> 'done'
       AND (r.status = 'pending'
            OR r.worker = %(worker)s
            -- a crashed worker's range: its connection is gone, or it stopped beating
            OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = r.worker_pid)
            OR r.heartbeat < now() - make_interval(secs => %(lease)s))
     ORDER BY r.range_no
     LIMIT 1
       FOR UPDATE SKIP LOCKED
)
UPDATE {ranges} AS r
   SET status = 'running', worker = %(worker)s, worker_pid = pg_backend_pid(), heartbeat = now(),
       started_at = coalesce(r.started_at, now())
  FROM candidate AS c
 WHERE r.migration = %(migration)s AND r.range_no = c.range_no
RETURNING r.range_no, r.lo_key, r.hi_key, r.cursor_key, r.rows_done
