WITH locked AS (
    SELECT l.{pk} AS key, to_jsonb(l) AS row_data, {reason_state} AS sqlstate, {reason_message} AS message
      FROM {legacy} AS l
     WHERE l.{pk} = ANY (%(keys)s::{pk_type}[])
       FOR NO KEY UPDATE
), stale AS (
    DELETE FROM {base} AS b USING locked AS k WHERE b.{pk} = k.key AND k.sqlstate IS NOT NULL
), quarantined AS (
    INSERT INTO {quarantine} AS q (migration, key, sqlstate, message, row_data, source)
    SELECT %(migration)s, k.key::text, k.sqlstate, k.message, k.row_data, 'backfill'
      FROM locked AS k WHERE k.sqlstate IS NOT NULL
    ON CONFLICT (migration, key) DO UPDATE
       SET sqlstate = EXCLUDED.sqlstate, message = EXCLUDED.message, row_data = EXCLUDED.row_data,
           source = EXCLUDED.source, last_seen = now(), resolved_at = NULL
)
SELECT coalesce(array_agg(k.key::text) FILTER (WHERE k.sqlstate IS NULL), '{{}}') FROM locked AS k
