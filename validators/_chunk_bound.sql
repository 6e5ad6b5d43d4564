-- The first key of the next chunk: an index-only walk of chunk_rows keys, a short statement of its own.
SELECT l.{pk}::text
  FROM {legacy} AS l
 WHERE {lower}
 ORDER BY l.{pk}
OFFSET %(chunk_rows)s
 LIMIT 1
