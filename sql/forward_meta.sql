IF r.{col} IS NULL THEN
            IF p_op <> 'INSERT' THEN
                DELETE FROM {table} WHERE {link} = r.{pk} AND {key} = {name};
            END IF;
        ELSE
            INSERT INTO {table} AS t ({link}, {key}, {value}) VALUES (r.{pk}, {name}, to_jsonb(r.{col}))
            ON CONFLICT ({link}, {key}) DO UPDATE SET {value} = EXCLUDED.{value}
            WHERE t.{value} IS DISTINCT FROM EXCLUDED.{value};
        END IF;
