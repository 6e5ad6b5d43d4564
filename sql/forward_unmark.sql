PERFORM pg_catalog.set_config('migrator.origin', coalesce(v_origin, ''), true);
