-- By a key array, not IN (…): a semi join of a few hundred keys may be planned as a hash join over a sequential
-- scan of the whole table; a key array is always probed through the primary key.
DELETE FROM {table} AS d WHERE d.{pk} = ANY(ARRAY(SELECT {pk} FROM p)) RETURNING 1
