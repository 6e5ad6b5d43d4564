-- doctor: for each schema the migration uses: does it exist, may the current role create in it, and which
-- other roles (PUBLIC included) hold CREATE on it. A NULL ACL means the built-in default (owner only).
SELECT s.name AS schema,
       n.oid IS NOT NULL AS exists,
       CASE WHEN n.oid IS NOT NULL THEN has_schema_privilege(n.oid, 'CREATE') END AS can_create,
       coalesce((SELECT array_agg(g.grantee ORDER BY g.grantee)
                   FROM (SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                              ELSE pg_get_userbyid(a.grantee)::text END AS grantee
                           FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                          WHERE a.privilege_type = 'CREATE' AND a.grantee <> n.nspowner) g),
                '{}') AS creators
  FROM unnest(%(schemas)s::text[]) WITH ORDINALITY AS s(name, k)
  LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = s.name
 ORDER BY s.k
