IF NEW.{col} IS NULL THEN
            IF TG_OP = 'UPDATE' THEN
                DELETE FROM {table} WHERE {link} = NEW.{pk} AND {key} = {name};
            END IF;
        ELSE
            INSERT INTO {table} AS t ({link}, {key}, {value}) VALUES (NEW.{pk}, {name}, to_jsonb(NEW.{col}))
            ON CONFLICT ({link}, {key}) DO UPDATE SET {value} = EXCLUDED.{value}
            WHERE t.{value} IS DISTINCT FROM EXCLUDED.{value};
        END IF;
