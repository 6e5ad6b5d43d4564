INSERT INTO {transitions} (migration, from_state, to_state, command, actor, reason, duration_ms, details)
VALUES (%(migration)s, %(state)s, %(state)s, %(command)s, %(actor)s, %(reason)s, %(duration_ms)s, %(details)s::jsonb)
