meta_ins AS (
    INSERT INTO {table} ({link}, {key}, {value})
    SELECT s.{pk}, kv.k, kv.v FROM src AS s JOIN base_ins AS b ON b.{pk} = s.{pk}
         CROSS JOIN LATERAL (VALUES {pairs}) AS kv (k, v)
     WHERE kv.v IS NOT NULL
     ORDER BY s.{pk}, kv.k{on_conflict}
)
