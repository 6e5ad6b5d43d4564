INSERT INTO {state} (migration, spec) VALUES (%(migration)s, %(spec)s::jsonb) ON CONFLICT (migration) DO NOTHING
