IF NEW.{disc} = {when} THEN
            {upsert}
        ELSIF TG_OP = 'UPDATE' THEN
            DELETE FROM {table} WHERE {link} = NEW.{pk};
        END IF;
