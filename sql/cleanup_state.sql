-- The state at the start of a cleanup batch, its row share-locked: a transition moving it waits for the batch to
-- commit, and the next batch deletes on the side the new state writes.
SELECT state FROM {state} WHERE migration = %s FOR SHARE
