-- A valid btree index of the table led by the creation-time column, partial on the draft flag being true.
SELECT c.relname::text
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_am am ON am.oid = c.relam
  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
 WHERE i.indrelid = %(table)s::regclass AND i.indisvalid AND i.indisready AND am.amname = 'btree'
   AND a.attname = %(created)s
   AND pg_get_expr(i.indpred, i.indrelid) IN (
       quote_ident(%(flag)s), '(' || quote_ident(%(flag)s) || ' = true)', '(' || quote_ident(%(flag)s) || ' IS TRUE)')
 ORDER BY i.indnatts, c.relname
 LIMIT 1
