-- Column types as the catalog spells them (to tell where a legacy column's type differs from its split column's),
-- and whether each column is NOT NULL.
SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull
  FROM pg_attribute AS a
 WHERE a.attrelid = to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped
