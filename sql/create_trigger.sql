CREATE OR REPLACE TRIGGER {trigger} {events} ON {table} FOR EACH {level} EXECUTE FUNCTION {function}()
