-- doctor: objects that carry the names migrator gives its own triggers (on the legacy and split tables)
-- and functions (in the state schema), if they exist already.
SELECT 'trigger' AS kind, t.tgname::text || ' on ' || t.tgrelid::regclass::text AS name
  FROM pg_catalog.pg_trigger t
 WHERE t.tgname = ANY (%(triggers)s::text[])
   AND t.tgrelid IN (SELECT to_regclass(r) FROM unnest(%(tables)s::text[]) AS r)
UNION ALL
SELECT 'function', p.oid::regprocedure::text
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = %(schema)s AND p.proname = ANY (%(functions)s::text[])
 ORDER BY 1, 2
