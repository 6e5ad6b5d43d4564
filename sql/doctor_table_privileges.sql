-- doctor: for each named table, does it exist, does the role own it (or inherit the owner's rights),
-- and may it reference it in a foreign key.
SELECT t.name,
       c.oid IS NOT NULL AS exists,
       pg_get_userbyid(c.relowner)::text AS owner,
       CASE WHEN c.oid IS NOT NULL THEN pg_has_role(c.relowner, 'USAGE') END AS owned,
       CASE WHEN c.oid IS NOT NULL THEN has_table_privilege(c.oid, 'REFERENCES') END AS can_reference
  FROM unnest(%(tables)s::text[]) WITH ORDINALITY AS t(name, n)
  LEFT JOIN pg_catalog.pg_class c ON c.oid = to_regclass(t.name)
 ORDER BY t.n
