-- Seed uploaded files numbered first..last (numbering continues after the
-- current max id).  See seed_data_users.sql for how the hash-based draws
-- work; this file owns salts 10-19.  No literal percent signs in this file:
-- psycopg would read them as placeholders.
WITH w AS MATERIALIZED (
    SELECT
        ARRAY['lecture_notes', 'assignment', 'syllabus', 'lab_report', 'slides', 'reading_list',
              'exam_prep', 'essay_draft', 'flashcards', 'summary', 'worksheet', 'scan'] AS stems,
        ARRAY['pdf', 'pdf', 'pdf', 'docx', 'pptx', 'png', 'jpg', 'xlsx', 'zip', 'txt']  AS exts,
        -- Owners come from every user, old or new, so appended files also
        -- reference pre-existing accounts; ordering makes the pick stable.
        (SELECT array_agg(u.id ORDER BY u.id) FROM public.auth_user AS u)               AS owner_ids
),
src AS (
    SELECT
        g.n,
        w.owner_ids[1 + floor((hashint8extended(g.n * 64 + 10, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.owner_ids))::int] AS owner_id,
        w.stems[1 + floor((hashint8extended(g.n * 64 + 11, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.stems))::int]         AS stem,
        w.exts[1 + floor((hashint8extended(g.n * 64 + 12, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.exts))::int]           AS ext,
        (hashint8extended(g.n * 64 + 13, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 AS r_size,
        -- Seconds only (never days) so the result ignores the session TimeZone.
        %(anchor)s::timestamptz
            - ((hashint8extended(g.n * 64 + 14, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656)
              * (3 * 365 * 86400) * interval '1 second'                                                  AS uploaded_at,
        (hashint8extended(g.n * 64 + 15, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 AS r_deleted,
        (hashint8extended(g.n * 64 + 16, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 AS r_deleted_at
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g (n)
    CROSS JOIN w
    -- Not flattened: each draw is computed once per row.
    OFFSET 0
)
INSERT INTO public.core_file (owner_id, name, size_bytes, uploaded_at, deleted_at)
SELECT
    s.owner_id,
    s.stem || '_' || s.n || '.' || s.ext,
    -- Log-uniform between 1 KiB and ~50 MB: many small files, a few big ones.
    floor(exp(ln(1024) + s.r_size * (ln(50000000) - ln(1024))))::bigint,
    s.uploaded_at,
    CASE WHEN s.r_deleted < 0.10
         THEN s.uploaded_at
              + s.r_deleted_at * extract(epoch FROM %(anchor)s::timestamptz - s.uploaded_at)::float8
                * interval '1 second'
    END
FROM src AS s
