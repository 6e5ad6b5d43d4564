-- Rows of a referencing table that point at quarantined keys: contract cannot re-point the foreign key at the base
-- table while they exist, accepted or not.
SELECT count(*)
  FROM {reference} AS r
 WHERE r.{column} IN (SELECT q.key::{pk_type} FROM {quarantine} AS q
                       WHERE q.migration = %(migration)s AND q.resolved_at IS NULL)
