PERFORM pg_catalog.set_config('migrator.origin', 'legacy', true);
