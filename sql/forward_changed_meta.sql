IF {changed} THEN
                        {sync}
                    END IF;
