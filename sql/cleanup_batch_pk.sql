-- One cleanup-drafts batch without the partial index: the next %(n)s keys after the cursor (a primary key range
-- scan, never the whole table), and the old drafts among them, then deleted.
WITH w AS (
    SELECT {pk} FROM {table} WHERE {after} ORDER BY {pk} LIMIT %(n)s
), p AS (
    SELECT {pk} FROM {table} WHERE {pk} = ANY(ARRAY(SELECT {pk} FROM w)) AND {flag} AND {created} < %(cutoff)s{lock}
),
g AS ({gone})
SELECT (SELECT count(*) FROM w), (SELECT count(*) FROM g), NULL, (SELECT {pk} FROM w ORDER BY {pk} DESC LIMIT 1)
