UPDATE {state} SET read_percent = {percent}, updated_at = now() WHERE migration = {migration}
