WITH moved AS (
    INSERT INTO {state} AS s (migration, state, updated_at, updated_by)
    VALUES (%(migration)s, %(to_state)s, now(), %(actor)s)
    ON CONFLICT (migration) DO UPDATE SET state = EXCLUDED.state, updated_at = now(), updated_by = EXCLUDED.updated_by
     WHERE s.state = %(from_state)s
    RETURNING migration
)
INSERT INTO {transitions} (migration, from_state, to_state, command, actor, reason, duration_ms, details)
SELECT migration, %(from_state)s, %(to_state)s, %(command)s, %(actor)s, %(reason)s, %(duration_ms)s, %(details)s::jsonb
  FROM moved
