WITH src AS MATERIALIZED (
    SELECT {src_cols}, {invalid} AS invalid
      FROM {legacy} AS l
     WHERE {lower} AND l.{pk} <= %(hi)s::{pk_type}
     ORDER BY l.{pk}
     LIMIT %(limit)s
       FOR KEY SHARE
){fk_locks}, base_ins AS (
    INSERT INTO {base} ({base_cols})
    SELECT {base_vals} FROM src AS s WHERE NOT s.invalid AND {fk_found}{new_only}{on_conflict}
    RETURNING {pk}
){children}
SELECT count(*), (SELECT s2.{pk} FROM src AS s2 ORDER BY s2.{pk} DESC LIMIT 1)::text, (SELECT count(*) FROM base_ins),
       coalesce(array_agg(s.{pk}::text) FILTER (WHERE s.invalid OR NOT {fk_found}), '{{}}')
  FROM src AS s
