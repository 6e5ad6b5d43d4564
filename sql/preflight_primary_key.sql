SELECT array_agg(a.attname::text ORDER BY a.attnum)
  FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
 WHERE i.indrelid = to_regclass(%(table)s) AND i.indisprimary
