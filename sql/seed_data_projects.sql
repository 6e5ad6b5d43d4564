-- Seed one slice of projects numbered first..last (numbering continues after
-- the current max id), plus their important dates and file attachments, in a
-- single statement: RETURNING hands the identity-assigned project ids to the
-- side tables without a round trip or a "WHERE id > x" rescan.
--
-- Draws are hashint8extended(key * 64 + salt, seed) mapped to [0, 1), see
-- seed_data_users.sql.  Projects are keyed by their row number (salts 20-49);
-- dates and attachments by their project id (salts 50-63).  No literal
-- percent signs in this file: psycopg would read them as placeholders.
WITH w AS MATERIALIZED (
    SELECT
        -- subjects and depts are parallel arrays: 'Data Structures' is a CS course.
        ARRAY['Linear Algebra', 'Organic Chemistry', 'World History', 'Microeconomics',
              'Data Structures', 'Molecular Biology', 'Classical Mechanics', 'Probability',
              'Operating Systems', 'Creative Writing', 'Cognitive Psychology', 'Databases'] AS subjects,
        ARRAY['MATH', 'CHEM', 'HIST', 'ECON', 'CS', 'BIO', 'PHYS', 'STAT', 'CS', 'ENG', 'PSY', 'CS'] AS depts,
        ARRAY['Introduction to ', 'Foundations of ', 'Advanced ', 'Applied ', '']             AS levels,
        ARRAY['Dr. ', 'Prof. ', '']                                                            AS titles,
        ARRAY['Maria', 'James', 'Aiko', 'Lucas', 'Fatima', 'Noah', 'Elena', 'Omar']           AS teacher_first,
        ARRAY['Garcia', 'Smith', 'Tanaka', 'Muller', 'Khan', 'Johnson', 'Rossi', 'Haddad']    AS teacher_last,
        ARRAY['Foundations', 'Problem sets', 'Midterm review', 'Lab work', 'Case studies',
              'Group project', 'Reading week', 'Guest lecture', 'Final review']               AS topics,
        ARRAY['Spanish', 'Python', 'Guitar', 'Calculus', 'Photography', 'Japanese',
              'Machine learning', 'Public speaking', 'Chess', 'Statistics', 'Piano', 'Drawing'] AS skills,
        ARRAY['beginner', 'intermediate', 'advanced', 'conversational', 'exam-ready']         AS goal_levels,
        ARRAY['daily', 'weekly', 'monthly']                                                    AS frequencies,
        ARRAY['Midterm exam', 'Final exam', 'Assignment due', 'Project deadline', 'Quiz',
              'Presentation', 'Milestone', 'Review session']                                   AS date_titles,
        -- Picking by position in an id-ordered array (instead of assuming ids
        -- are 1..n) keeps FKs valid across gaps and appended batches.
        (SELECT array_agg(u.id ORDER BY u.id) FROM public.auth_user AS u)                     AS owner_ids,
        (SELECT array_agg(f.id ORDER BY f.id) FROM public.core_file AS f)                     AS file_ids
),
d AS (
    SELECT
        g.i,
        (hashint8extended(g.i * 64 + 20, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 < 0.55 AS is_school,
        (hashint8extended(g.i * 64 + 21, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656
            < %(dirty_ratio)s::float8                                                                        AS is_dirty,
        -- Which required fields a dirty row lacks; interpreted per project type below.
        (hashint8extended(g.i * 64 + 22, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656      AS r_gap,
        w.owner_ids[1 + floor((hashint8extended(g.i * 64 + 23, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.owner_ids))::int] AS owner_id,
        1 + floor((hashint8extended(g.i * 64 + 24, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.subjects))::int AS subject_pos,
        w.levels[1 + floor((hashint8extended(g.i * 64 + 25, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.levels))::int] AS course_level,
        100 + floor((hashint8extended(g.i * 64 + 26, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * 400)::int AS course_number,
        w.titles[1 + floor((hashint8extended(g.i * 64 + 27, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.titles))::int] AS teacher_title,
        w.teacher_first[1 + floor((hashint8extended(g.i * 64 + 28, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.teacher_first))::int] AS teacher_first,
        w.teacher_last[1 + floor((hashint8extended(g.i * 64 + 29, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.teacher_last))::int] AS teacher_last,
        (hashint8extended(g.i * 64 + 30, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 AS r_syllabus,
        (hashint8extended(g.i * 64 + 31, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 AS r_weeks,
        floor((hashint8extended(g.i * 64 + 32, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.topics))::int AS topic_pos,
        w.skills[1 + floor((hashint8extended(g.i * 64 + 33, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.skills))::int] AS skill,
        w.goal_levels[1 + floor((hashint8extended(g.i * 64 + 34, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.goal_levels))::int] AS goal_level,
        w.frequencies[1 + floor((hashint8extended(g.i * 64 + 35, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.frequencies))::int] AS frequency,
        (hashint8extended(g.i * 64 + 36, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 < 0.85 AS has_start,
        floor((hashint8extended(g.i * 64 + 37, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * 60)::int AS start_offset_days,
        (hashint8extended(g.i * 64 + 38, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 < 0.80 AS has_end,
        14 + floor((hashint8extended(g.i * 64 + 39, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * 350)::int AS duration_days,
        (hashint8extended(g.i * 64 + 40, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 < 0.30 AS is_draft,
        -- Seconds only (never days) so the result ignores the session TimeZone.
        %(anchor)s::timestamptz
            - ((hashint8extended(g.i * 64 + 41, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656)
              * (3 * 365 * 86400) * interval '1 second'                                                      AS created_at,
        (hashint8extended(g.i * 64 + 42, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 AS r_updated,
        w.subjects,
        w.depts,
        w.topics
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g (i)
    CROSS JOIN w
    -- Not flattened: each draw is computed once per row, not once per use.
    OFFSET 0
),
ins AS (
    INSERT INTO public.core_project (
        name, project_type, owner_id,
        course_name, course_code, teacher_name, syllabus,
        goal_description, study_frequency,
        start_date, end_date, is_draft, created_at, updated_at
    )
    SELECT
        'Project ' || d.i || ': ' || CASE WHEN d.is_school THEN d.subjects[d.subject_pos] ELSE d.skill END,
        CASE WHEN d.is_school THEN 'school' ELSE 'self_study' END,
        d.owner_id,
        -- School rows: a dirty one lacks a non-empty subset of these three,
        -- encoded as bits of a value in 1..7 (1 name, 2 code, 4 teacher).
        CASE WHEN d.is_school AND NOT (d.is_dirty AND ((1 + floor(d.r_gap * 7)::int) & 1) <> 0)
             THEN d.course_level || d.subjects[d.subject_pos] END,
        CASE WHEN d.is_school AND NOT (d.is_dirty AND ((1 + floor(d.r_gap * 7)::int) & 2) <> 0)
             THEN d.depts[d.subject_pos] || '-' || d.course_number END,
        CASE WHEN d.is_school AND NOT (d.is_dirty AND ((1 + floor(d.r_gap * 7)::int) & 4) <> 0)
             THEN d.teacher_title || d.teacher_first || ' ' || d.teacher_last END,
        -- Optional even on clean rows: the old form never required it.
        CASE WHEN d.is_school AND d.r_syllabus < 0.60
             THEN jsonb_build_object(
                      'weeks', 10 + floor(d.r_weeks * 7)::int,
                      'topics', jsonb_build_array(
                          d.topics[1 + d.topic_pos],
                          d.topics[1 + mod(d.topic_pos + 1, cardinality(d.topics))],
                          d.topics[1 + mod(d.topic_pos + 2, cardinality(d.topics))]))
        END,
        -- Self-study rows: a dirty one mostly lacks the frequency (r_gap below
        -- 0.7), sometimes the goal (0.7 to 0.9), occasionally both.
        CASE WHEN NOT d.is_school AND NOT (d.is_dirty AND d.r_gap >= 0.7)
             THEN 'Reach ' || d.goal_level || ' level in ' || d.skill
                  || ' within ' || (4 + floor(d.r_weeks * 49)::int) || ' weeks' END,
        CASE WHEN NOT d.is_school AND NOT (d.is_dirty AND (d.r_gap < 0.7 OR d.r_gap >= 0.9))
             THEN d.frequency END,
        CASE WHEN d.has_start
             THEN (d.created_at AT TIME ZONE 'UTC')::date + d.start_offset_days END,
        CASE WHEN d.has_start AND d.has_end
             THEN (d.created_at AT TIME ZONE 'UTC')::date + d.start_offset_days + d.duration_days END,
        d.is_draft,
        d.created_at,
        -- Squared so most rows were touched soon after creation, as in real apps.
        d.created_at
            + d.r_updated * d.r_updated
              * extract(epoch FROM %(anchor)s::timestamptz - d.created_at)::float8 * interval '1 second'
    FROM d
    RETURNING
        id, project_type, course_name, course_code, teacher_name,
        goal_description, study_frequency, start_date, created_at
),
dates AS (
    -- 0, 1 or 2 dates per project (60/30/10), i.e. about one per two projects.
    INSERT INTO public.core_importantdate (project_id, title, date)
    SELECT
        p.id,
        w.date_titles[1 + floor((hashint8extended(p.id * 64 + 49 + 2 * k.n, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * cardinality(w.date_titles))::int],
        coalesce(p.start_date, (p.created_at AT TIME ZONE 'UTC')::date)
            + floor((hashint8extended(p.id * 64 + 50 + 2 * k.n, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656 * 180)::int
    FROM ins AS p
    CROSS JOIN (VALUES (1), (2)) AS k (n)
    CROSS JOIN w
    WHERE (hashint8extended(p.id * 64 + 50, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656
          < CASE k.n WHEN 1 THEN 0.40 ELSE 0.10 END
    -- Fixes id assignment regardless of the join order the planner picks.
    ORDER BY p.id, k.n
),
att AS (
    -- 0, 1 or 2 files per project (75/16.7/8.3), i.e. about one per three
    -- projects.  The second file is offset from the first by 1..n_files-1
    -- positions, so a project never gets the same file twice and the
    -- (project_id, file_id) pairs are unique without ON CONFLICT.
    INSERT INTO public.core_project_attachments (project_id, file_id)
    SELECT
        p.id,
        w.file_ids[1 + CASE k.n
            WHEN 1 THEN a.first_pos
            ELSE mod(a.first_pos + 1
                     + floor((hashint8extended(p.id * 64 + 57, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656
                             * (a.n_files - 1))::int,
                     a.n_files)
        END]
    FROM ins AS p
    CROSS JOIN w
    CROSS JOIN LATERAL (
        SELECT
            cardinality(w.file_ids) AS n_files,
            floor((hashint8extended(p.id * 64 + 56, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656
                  * cardinality(w.file_ids))::int AS first_pos
    ) AS a
    CROSS JOIN (VALUES (1), (2)) AS k (n)
    WHERE (hashint8extended(p.id * 64 + 55, %(seed)s::bigint) & 281474976710655)::float8 / 281474976710656
          < CASE k.n WHEN 1 THEN 0.25 ELSE 1.0 / 12 END
      AND a.n_files >= k.n
    ORDER BY p.id, k.n
)
SELECT
    count(*) AS inserted,
    count(*) FILTER (
        WHERE (project_type = 'school'
               AND (course_name IS NULL OR course_code IS NULL OR teacher_name IS NULL))
           OR (project_type = 'self_study'
               AND (goal_description IS NULL OR study_frequency IS NULL))
    ) AS dirty
FROM ins
