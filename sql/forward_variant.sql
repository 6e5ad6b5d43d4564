IF {row}.{disc} = {when} THEN
            {upsert}
        ELSIF {op} <> 'INSERT' THEN
            DELETE FROM {table} WHERE {link} = {row}.{pk};
        END IF;
