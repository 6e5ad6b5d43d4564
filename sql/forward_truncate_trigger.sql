BEGIN
    IF {from_split} THEN
        RETURN NULL;
    END IF;
    -- In write_new the split base's reverse truncate trigger must not echo this back.
    PERFORM pg_catalog.set_config('migrator.origin', 'legacy', true);
    TRUNCATE {tables};
    PERFORM pg_catalog.set_config('migrator.origin', '', true);
    UPDATE {quarantine} SET resolved_at = now() WHERE migration = {migration} AND resolved_at IS NULL;
    RETURN NULL;
END
