-- One cleanup-drafts batch through the partial index ({created} WHERE {flag}): the oldest drafts past the cutoff
-- after the keyset cursor (the dead index entries earlier batches left are never walked again), then deleted.
WITH p AS (
    SELECT {pk}, {created} FROM {table}
     WHERE {flag} AND {created} < %(cutoff)s AND {after}
     ORDER BY {created}, {pk} LIMIT %(n)s{lock}
), w AS (SELECT * FROM p),
g AS ({gone}),
last AS (SELECT {created}, {pk} FROM w ORDER BY {created} DESC, {pk} DESC LIMIT 1)
SELECT (SELECT count(*) FROM w), (SELECT count(*) FROM g), (SELECT {created} FROM last), (SELECT {pk} FROM last)
