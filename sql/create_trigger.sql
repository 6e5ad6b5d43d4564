CREATE OR REPLACE TRIGGER {trigger} AFTER {events} ON {table} FOR EACH {level} EXECUTE FUNCTION {function}()
