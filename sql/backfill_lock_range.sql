SELECT l.{pk}::text FROM {legacy} AS l
 WHERE {lower} AND l.{pk} <= %(hi)s::{pk_type}
 ORDER BY l.{pk} LIMIT %(limit)s
   FOR NO KEY UPDATE
