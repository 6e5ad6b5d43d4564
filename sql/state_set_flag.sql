UPDATE {state} SET {column} = %(value)s, updated_at = now(), updated_by = current_user WHERE migration = %(migration)s
