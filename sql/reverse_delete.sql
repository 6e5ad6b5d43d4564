DELETE FROM {legacy} AS l
 WHERE l.{pk} = ANY (%(keys)s::{pk_type}[])
   AND NOT EXISTS (SELECT 1 FROM {base} AS b WHERE b.{pk} = l.{pk})
   AND NOT EXISTS (SELECT 1 FROM {quarantine} AS q WHERE q.migration = %(migration)s AND q.key = l.{pk}::text
                                                     AND q.resolved_at IS NULL)
