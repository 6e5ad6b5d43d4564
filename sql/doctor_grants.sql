-- doctor: every role but the owner holding a privilege on the legacy table, table-level and column-level
-- (a column grant shows as e.g. UPDATE(name)). PUBLIC is grantee 0.
WITH legacy AS (SELECT c.oid, c.relowner, c.relacl FROM pg_catalog.pg_class c WHERE c.oid = to_regclass(%(table)s)),
privileges AS (
    SELECT a.grantee, a.privilege_type::text AS privilege
      FROM legacy l, aclexplode(l.relacl) a
     WHERE a.grantee <> l.relowner
    UNION ALL
    SELECT a.grantee, a.privilege_type::text || '(' || att.attname::text || ')'
      FROM legacy l
      JOIN pg_catalog.pg_attribute att ON att.attrelid = l.oid AND att.attnum > 0 AND NOT att.attisdropped
     CROSS JOIN LATERAL aclexplode(att.attacl) a
     WHERE a.grantee <> l.relowner
)
SELECT CASE WHEN p.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(p.grantee)::text END AS role,
       array_agg(DISTINCT p.privilege ORDER BY p.privilege) AS privileges
  FROM privileges p
 GROUP BY 1
 ORDER BY 1
