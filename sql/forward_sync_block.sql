-- Shared by the sync function and (inline, saving a call per statement) the forward trigger.
    -- While we write the split rows, the reverse triggers (on in write_new) must not copy them back.
    {mark}
    BEGIN
        {sync}
        -- A quarantined key has no split rows (the handler below removes them), so only a row whose base row
        -- was missing can be in quarantine; a new legacy row (INSERT) never is (its delete resolved it).
        IF v_inserted AND {op} <> 'INSERT' THEN
            UPDATE {quarantine} SET resolved_at = now()
             WHERE migration = {migration} AND key = {row}.{pk}::text AND resolved_at IS NULL;
        END IF;
    EXCEPTION WHEN integrity_constraint_violation OR data_exception THEN
        -- The block's writes are undone; remove split rows left from an earlier version of the row, so the
        -- split side never shows stale data for a quarantined key.
        DELETE FROM {base} WHERE {pk} = {row}.{pk};
        INSERT INTO {quarantine} AS q (migration, key, sqlstate, message, row_data, source)
        VALUES ({migration}, {row}.{pk}::text, SQLSTATE, SQLERRM, to_jsonb({row}), {source})
        ON CONFLICT (migration, key) DO UPDATE
           SET sqlstate = EXCLUDED.sqlstate, message = EXCLUDED.message, row_data = EXCLUDED.row_data,
               source = EXCLUDED.source, last_seen = now(), resolved_at = NULL;
    END;
    {unmark}
