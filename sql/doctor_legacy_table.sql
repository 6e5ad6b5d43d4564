-- doctor: the legacy table as the catalog describes it; no row when it does not exist.
-- owned: the current role is the owner or inherits the owner's privileges (what ALTER/CREATE TRIGGER need).
SELECT c.relkind::text AS kind,
       pg_get_userbyid(c.relowner)::text AS owner,
       pg_has_role(c.relowner, 'USAGE') AS owned,
       c.relrowsecurity AS rls,
       c.relforcerowsecurity AS rls_forced,
       (SELECT count(*) FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid) AS policies,
       pg_total_relation_size(c.oid) AS bytes,
       greatest(c.reltuples, 0)::bigint AS rows_estimate
  FROM pg_catalog.pg_class c
 WHERE c.oid = to_regclass(%(table)s)
