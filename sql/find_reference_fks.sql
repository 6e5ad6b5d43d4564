SELECT c.conname::text, c.confdeltype::text, c.confupdtype::text
  FROM pg_constraint AS c
 WHERE c.contype = 'f' AND c.conrelid = to_regclass(%(table)s) AND c.confrelid = to_regclass(%(target)s)
   AND c.conkey = ARRAY[(SELECT a.attnum FROM pg_attribute AS a
                          WHERE a.attrelid = c.conrelid AND a.attname = %(column)s)]::smallint[]
