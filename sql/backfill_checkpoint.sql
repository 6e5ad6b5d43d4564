UPDATE {ranges}
   SET cursor_key = coalesce(%(cursor)s, cursor_key), rows_done = rows_done + %(rows)s, heartbeat = now(),
       status = CASE WHEN %(finished)s THEN 'done' ELSE status END,
       finished_at = CASE WHEN %(finished)s THEN now() END
 WHERE migration = %(migration)s AND range_no = %(range_no)s AND worker = %(worker)s
RETURNING (SELECT paused FROM {state} WHERE migration = %(migration)s)
