IF NEW.{disc} = {when} AND {changed} THEN
                        {upsert}
                    END IF;
