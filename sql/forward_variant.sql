IF r.{disc} = {when} THEN
            {upsert}
        ELSIF p_op <> 'INSERT' THEN
            DELETE FROM {table} WHERE {link} = r.{pk};
        END IF;
