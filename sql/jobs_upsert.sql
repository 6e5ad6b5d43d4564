INSERT INTO {jobs} AS j (migration, job, client, phase, done, total, rows_per_second, pace, held_by)
VALUES (%(migration)s, %(job)s, %(client)s, %(phase)s, %(done)s, %(total)s, %(rate)s, %(pace)s, %(held_by)s)
ON CONFLICT (migration, job) DO UPDATE
   SET client = excluded.client, updated_at = now(), phase = excluded.phase, done = excluded.done,
       total = excluded.total, rows_per_second = excluded.rows_per_second, pace = excluded.pace,
       held_by = excluded.held_by,
       -- the same job started again (a resumed backfill) starts its clock again
       started_at = CASE WHEN j.client = excluded.client THEN j.started_at ELSE now() END
