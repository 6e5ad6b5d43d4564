SELECT count(*), (pg_catalog.array_agg(x.k ORDER BY x.k DESC))[1]::text FROM (SELECT l.{pk} AS k FROM {legacy} AS l WHERE {lower} ORDER BY l.{pk} LIMIT %(limit)s) AS x
