WITH moved AS (
    UPDATE {state} SET state = %(to_state)s, updated_at = now(), updated_by = %(actor)s
     WHERE migration = %(migration)s AND state = %(from_state)s
    RETURNING migration
)
INSERT INTO {transitions} (migration, from_state, to_state, command, actor, reason, duration_ms, details)
SELECT migration, %(from_state)s, %(to_state)s, %(command)s, %(actor)s, %(reason)s, %(duration_ms)s, %(details)s::jsonb
  FROM moved
