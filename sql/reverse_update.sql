UPDATE {legacy} AS l SET ({cols}) = ROW({new_cols})
  FROM ({split}) AS s
 WHERE l.{pk} = s.{pk} AND l.{pk} = ANY (%(keys)s::{pk_type}[])
   AND ({legacy_cols}) IS DISTINCT FROM ({split_cols})
