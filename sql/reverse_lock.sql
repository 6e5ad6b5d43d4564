SELECT l.{pk}::text FROM {legacy} AS l WHERE l.{pk} = ANY (%(keys)s::{pk_type}[]) ORDER BY l.{pk} FOR UPDATE
