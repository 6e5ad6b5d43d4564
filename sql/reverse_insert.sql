-- Only the chunk's base keys that have no legacy row (created after contract) are read whole through the split
-- side: the rest of the chunk costs an index probe per key, not a row joined from every split table.
WITH ins AS (
    INSERT INTO {legacy} ({cols}) OVERRIDING SYSTEM VALUE
    SELECT {cols} FROM ({split}) AS s
     WHERE s.{pk} = ANY (ARRAY(
           SELECT b.{pk} FROM {base} AS b
            WHERE {lower} AND b.{pk} <= %(hi)s::{pk_type}
              AND NOT EXISTS (SELECT 1 FROM {legacy} AS l WHERE l.{pk} = b.{pk})))
    ON CONFLICT DO NOTHING RETURNING 1
)
SELECT count(*) FROM ins
