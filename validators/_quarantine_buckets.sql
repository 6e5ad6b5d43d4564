-- Open quarantine keys grouped by the chunk they fall in (width_bucket over the chunks' first keys), read once:
-- a chunk then leaves them out with a hashed = ANY instead of probing the quarantine table row by row.
SELECT width_bucket(q.key::{pk_type}, %(bounds)s::text[]::{pk_type}[]) AS chunk, array_agg(q.key) AS keys
  FROM {quarantine} AS q
 WHERE q.migration = %(migration)s AND q.resolved_at IS NULL
 GROUP BY 1
