SELECT count(*), max(x.k)::text FROM (SELECT l.{pk} AS k FROM {legacy} AS l WHERE {lower} ORDER BY l.{pk} LIMIT %(limit)s) AS x
