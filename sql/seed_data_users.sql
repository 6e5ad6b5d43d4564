-- Seed users numbered first..last; the caller continues numbering after the
-- current max id so appended users get fresh usernames.
--
-- Placeholders are psycopg named parameters, so a literal percent sign must
-- never appear in this file, not even in comments.
--
-- Randomness: every draw is hashint8extended(key * 64 + salt, seed) mapped to
-- [0, 1).  It depends only on (seed, key, salt), never on evaluation order,
-- so results are identical whatever plan the server picks.  Salts are unique
-- across all seed_data_*.sql files (users 0-9, files 10-19, projects 20-49,
-- side tables 50-63) so no two columns are correlated.
WITH w AS MATERIALIZED (
    SELECT
        ARRAY['Maria', 'James', 'Aiko', 'Lucas', 'Fatima', 'Noah', 'Elena', 'Omar',
              'Sofia', 'Liam', 'Priya', 'Mateo', 'Chloe', 'Ivan', 'Zara', 'Kenji']   AS first_names,
        ARRAY['Garcia', 'Smith', 'Tanaka', 'Muller', 'Khan', 'Johnson', 'Rossi', 'Haddad',
              'Silva', 'Brown', 'Patel', 'Lopez', 'Martin', 'Petrov', 'Okafor', 'Kim'] AS last_names,
        ARRAY['example.com', 'example.org', 'mail.example.net', 'uni.example.edu']     AS domains
),
src AS (
    SELECT
        g.n,
        w.first_names[1 + floor((hashint8extended(g.n * 64 + 0, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.first_names))::int] AS first_name,
        w.last_names[1 + floor((hashint8extended(g.n * 64 + 1, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.last_names))::int]   AS last_name,
        w.domains[1 + floor((hashint8extended(g.n * 64 + 2, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.domains))::int]         AS domain,
        (hashint8extended(g.n * 64 + 3, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 AS r_email,
        (hashint8extended(g.n * 64 + 4, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 AS r_joined
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g (n)
    CROSS JOIN w
    -- OFFSET 0 keeps the subquery from being flattened, so each draw is
    -- computed once per row instead of once per reference.
    OFFSET 0
)
INSERT INTO public.auth_user (username, email, date_joined)
SELECT
    lower(s.first_name) || '.' || lower(s.last_name) || s.n,
    -- The legacy signup form made email optional; about 2 in 100 never filled it in.
    CASE WHEN s.r_email < 0.02 THEN ''
         ELSE lower(s.first_name) || '.' || lower(s.last_name) || s.n || '@' || s.domain
    END,
    -- Offsets are pure seconds: day-sized intervals would make timestamptz
    -- arithmetic depend on the session TimeZone (DST) and break determinism.
    %(anchor)s::timestamptz - s.r_joined * (4 * 365 * 86400) * interval '1 second'
FROM src AS s
-- A hand-made user may already own one of these names; skip it rather than fail.
ON CONFLICT (username) DO NOTHING
