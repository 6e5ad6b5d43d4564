-- Whether a referencing column leads a valid index: chunked checks range-scan it, and without an index each
-- chunk would scan the whole table.
SELECT to_regclass(%(table)s) IS NOT NULL,
       EXISTS (SELECT 1
                 FROM pg_index AS i
                 JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                WHERE i.indrelid = to_regclass(%(table)s) AND i.indisvalid AND a.attname = %(column)s)
