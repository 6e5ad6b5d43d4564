
    -- The legacy table's own BEFORE triggers may have changed the row just written (a filled default, a stamped
    -- updated_at): carry their effect back to the split rows, so legacy equals split after every write. The
    -- origin says legacy meanwhile, so the split tables' reverse triggers do not echo it.
    IF {when} THEN
        PERFORM set_config('migrator.origin', 'legacy', true);
        {updates}
    END IF;