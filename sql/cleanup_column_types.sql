-- The types of the draft flag and creation-time columns cleanup-drafts would use (absent ones are not listed).
SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
  FROM pg_attribute a
 WHERE a.attrelid = %(table)s::regclass AND a.attnum > 0 AND NOT a.attisdropped
   AND a.attname IN (%(flag)s, %(created)s)
