SELECT a.attname::text,
       CASE WHEN a.attidentity <> '' THEN format('nextval(%%L::regclass)', pg_get_serial_sequence(%(table)s, a.attname))
            ELSE pg_get_expr(d.adbin, d.adrelid) END
  FROM pg_attribute AS a LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attrelid = to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped
   AND (d.adbin IS NOT NULL OR a.attidentity <> '') AND a.attname = ANY (%(columns)s)
