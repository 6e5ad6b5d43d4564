-- doctor: what depends on the legacy table, as (kind, name, how). Views and materialized views through their
-- rewrite rules; rules on the table; functions recorded in pg_depend (SQL-standard bodies, the row type) or
-- whose source names the table (<pattern>, a word-bounded regex: PL/pgSQL records no dependencies); triggers
-- of other tables that call such a function; foreign keys pointing at it; publications. The migration's own
-- functions (<own> in schema <schema>) are left out; `expected` marks a foreign key of a table the spec's
-- [[references]] name (<references>), which contract re-points itself.
WITH legacy AS (
    SELECT c.oid, c.reltype FROM pg_catalog.pg_class c WHERE c.oid = to_regclass(%(table)s)
),
functions AS (
    SELECT p.oid, 'depends on it (pg_depend)' AS how
      FROM legacy l
      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass
                                 AND d.refclassid IN ('pg_catalog.pg_class'::regclass, 'pg_catalog.pg_type'::regclass)
                                 AND d.refobjid IN (l.oid, l.reltype)
      JOIN pg_catalog.pg_proc p ON p.oid = d.objid
    UNION
    SELECT p.oid, 'its source names the table'
      FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%%'
       AND p.prosrc ~* %(pattern)s
),
foreign_functions AS (
    SELECT f.oid, min(f.how) AS how
      FROM functions f JOIN pg_catalog.pg_proc p ON p.oid = f.oid
      JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
     WHERE NOT (n.nspname = %(schema)s AND p.proname = ANY (%(own)s::text[]))
     GROUP BY f.oid
)
SELECT DISTINCT CASE v.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END AS kind,
       v.oid::regclass::text AS name, 'selects from it' AS how, false AS expected
  FROM legacy l
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass
                             AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = l.oid
  JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
  JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
 WHERE v.oid <> l.oid
UNION ALL
SELECT 'rule', r.rulename::text, 'on the legacy table (' || CASE r.ev_type WHEN '2' THEN 'UPDATE' WHEN '3' THEN 'INSERT'
       WHEN '4' THEN 'DELETE' ELSE 'SELECT' END || ')', false
  FROM legacy l JOIN pg_catalog.pg_rewrite r ON r.ev_class = l.oid
 WHERE r.rulename <> '_RETURN'
UNION ALL
SELECT 'function', f.oid::regprocedure::text, f.how, false
  FROM foreign_functions f
UNION ALL
SELECT 'trigger', t.tgname::text || ' on ' || t.tgrelid::regclass::text, 'calls ' || t.tgfoid::regprocedure::text, false
  FROM legacy l
  JOIN pg_catalog.pg_trigger t ON t.tgrelid <> l.oid AND NOT t.tgisinternal
  JOIN foreign_functions f ON f.oid = t.tgfoid
UNION ALL
SELECT 'foreign key', k.conrelid::regclass::text,
       k.conname::text || ' (' || (SELECT string_agg(a.attname::text, ', ' ORDER BY a.attnum)
                                     FROM pg_catalog.pg_attribute a
                                    WHERE a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey)) || ')',
       k.conrelid IN (SELECT to_regclass(x) FROM unnest(%(references)s::text[]) AS x)
  FROM legacy l JOIN pg_catalog.pg_constraint k ON k.confrelid = l.oid AND k.contype = 'f' AND k.conrelid <> l.oid
UNION ALL
SELECT 'publication', pr.pubname::text, 'publishes it', false
  FROM legacy l JOIN pg_catalog.pg_publication_rel r ON r.prrelid = l.oid
  JOIN pg_catalog.pg_publication pr ON pr.oid = r.prpubid
 ORDER BY 1, 2
