SELECT state, read_percent, paused, updated_at, updated_by FROM {state} WHERE migration = %(migration)s
