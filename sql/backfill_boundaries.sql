SELECT (SELECT l.{pk} FROM {legacy} AS l ORDER BY l.{pk} DESC LIMIT 1)::text,
       (SELECT (percentile_disc(%(fractions)s::float8[]) WITHIN GROUP (ORDER BY l.{pk}))::text[] FROM {legacy} AS l)
