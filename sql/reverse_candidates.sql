-- Read-only, no row lock: the chunk's legacy rows that differ from the split side (or have no split row). Once
-- both syncs are back on, every write keeps a row equal in its own transaction, so a row equal now stays equal:
-- only these need the lock and the refresh.
SELECT l.{pk}::text
  FROM {legacy} AS l
  LEFT JOIN ({split}) AS s ON s.{pk} = l.{pk} AND {lower_s} AND s.{pk} <= %(hi)s::{pk_type}
 WHERE {lower} AND l.{pk} <= %(hi)s::{pk_type}
   AND (s.{pk} IS NULL OR ({legacy_cols}) IS DISTINCT FROM ({split_cols}))
 ORDER BY l.{pk}
