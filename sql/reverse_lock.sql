SELECT l.{pk}::text FROM {legacy} AS l WHERE {lower} ORDER BY l.{pk} LIMIT %(limit)s FOR UPDATE
