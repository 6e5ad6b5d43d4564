IF {row}.{col} IS NULL THEN
            IF {op} <> 'INSERT' THEN
                DELETE FROM {table} WHERE {link} = {row}.{pk} AND {key} = {name};
            END IF;
        ELSE
            INSERT INTO {table} AS t ({link}, {key}, {value}) VALUES ({row}.{pk}, {name}, to_jsonb({row}.{col}))
            ON CONFLICT ({link}, {key}) DO UPDATE SET {value} = EXCLUDED.{value}
            WHERE t.{value} IS DISTINCT FROM EXCLUDED.{value};
        END IF;
