{name} AS (
    SELECT r.{ref_col} AS k FROM {ref} AS r
     WHERE r.{ref_col} IN (SELECT s.{col} FROM src AS s WHERE NOT s.invalid)
       FOR KEY SHARE OF r
)