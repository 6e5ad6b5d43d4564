SELECT count(*) FROM {quarantine} WHERE migration = %(migration)s AND resolved_at IS NULL AND accepted_at IS NULL
