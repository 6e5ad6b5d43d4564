SELECT count({sync_function}(l, 'SYNC', 'backfill')) FROM {legacy} AS l WHERE l.{pk} = ANY (%(keys)s::{pk_type}[])
