WITH batch AS (
    SELECT s.* FROM ({split}) AS s WHERE {lower} ORDER BY s.{pk} LIMIT %(limit)s
), ins AS (
    INSERT INTO {legacy} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM batch ON CONFLICT DO NOTHING RETURNING 1
)
SELECT count(*), (SELECT b.{pk} FROM batch AS b ORDER BY b.{pk} DESC LIMIT 1)::text, (SELECT count(*) FROM ins)
  FROM batch
