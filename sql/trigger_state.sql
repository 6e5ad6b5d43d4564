SELECT t.tgname::text, t.tgenabled::text
  FROM pg_trigger t
 WHERE t.tgrelid = to_regclass(%(table)s) AND NOT t.tgisinternal AND t.tgname = ANY (%(names)s)
