BEGIN
    IF {from_split} THEN
        RETURN NULL;
    END IF;
    TRUNCATE {tables};
    UPDATE {quarantine} SET resolved_at = now() WHERE migration = {migration} AND resolved_at IS NULL;
    RETURN NULL;
END
