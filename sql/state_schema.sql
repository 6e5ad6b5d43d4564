CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}.state (
    migration    text PRIMARY KEY,
    state        text NOT NULL DEFAULT 'legacy' CHECK (state IN ({states})),
    read_percent bigint NOT NULL DEFAULT 0 CHECK (read_percent BETWEEN 0 AND 100),
    paused       boolean NOT NULL DEFAULT false,
    spec         jsonb,
    -- contract's quiet-period guard: the legacy-writes counter's value, and since when it has not moved
    legacy_mark    bigint,
    legacy_mark_at timestamptz,
    -- a rollback's quiet-period guard on the split side: the split-writes counter's value, and since when
    split_mark     bigint,
    split_mark_at  timestamptz,
    -- a transition that commits several steps records each here as it commits it (NULL: none in flight)
    progress       jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    updated_by   text NOT NULL DEFAULT current_user
);

-- Columns added after the first release: a state schema created by an older migrator gains them here.
ALTER TABLE {schema}.state ADD COLUMN IF NOT EXISTS legacy_mark bigint;
ALTER TABLE {schema}.state ADD COLUMN IF NOT EXISTS legacy_mark_at timestamptz;
ALTER TABLE {schema}.state ADD COLUMN IF NOT EXISTS split_mark bigint;
ALTER TABLE {schema}.state ADD COLUMN IF NOT EXISTS split_mark_at timestamptz;
ALTER TABLE {schema}.state ADD COLUMN IF NOT EXISTS progress jsonb;

CREATE TABLE IF NOT EXISTS {schema}.transitions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    migration   text NOT NULL,
    from_state  text NOT NULL,
    to_state    text NOT NULL,
    command     text NOT NULL,
    actor       text NOT NULL,
    db_user     text NOT NULL DEFAULT current_user,
    at          timestamptz NOT NULL DEFAULT now(),
    reason      text,
    duration_ms bigint,
    details     jsonb
);

-- What migrator created (or took over empty) for a migration: the only tables it will ever empty or drop.
CREATE TABLE IF NOT EXISTS {schema}.objects (
    migration  text NOT NULL,
    kind       text NOT NULL,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration, kind, name)
);

-- Rows the split schema rejected (DESIGN.md §Races 4): the application's write succeeded, the copy did not.
CREATE TABLE IF NOT EXISTS {schema}.quarantine (
    migration   text NOT NULL,
    key         text NOT NULL,
    sqlstate    text NOT NULL,
    message     text NOT NULL,
    row_data    jsonb,
    source      text NOT NULL DEFAULT 'trigger',
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    accepted_at timestamptz,
    PRIMARY KEY (migration, key)
);

-- For applications in other languages: SELECT migrator.flag_state('core_project_split'). Any role may read the
-- flags (a state name and a percentage are no secret, and an application started before expand must be able to
-- read them later without a grant step): the functions run as their owner, with a pinned search_path, and the
-- schema's USAGE lets callers reach them; the tables themselves grant nothing to anyone.
CREATE OR REPLACE FUNCTION {schema}.flag_state(p_migration text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce((SELECT state FROM {schema}.state WHERE migration = p_migration), 'legacy') $$;

CREATE OR REPLACE FUNCTION {schema}.read_percent(p_migration text) RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce((SELECT read_percent FROM {schema}.state WHERE migration = p_migration), 0)::integer $$;

GRANT USAGE ON SCHEMA {schema} TO PUBLIC;

-- Backfill work, split into key ranges that workers claim with FOR UPDATE SKIP LOCKED. Each chunk commits
-- its range's cursor with the rows it copied, so a killed backfill resumes exactly where it stopped.
CREATE TABLE IF NOT EXISTS {schema}.backfill_ranges (
    migration   text NOT NULL,
    range_no    bigint NOT NULL,
    lo_key      text,
    hi_key      text,
    cursor_key  text,
    rows_done   bigint NOT NULL DEFAULT 0,
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done')),
    worker      text,
    worker_pid  bigint,
    heartbeat   timestamptz,
    started_at  timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (migration, range_no)
);

-- What each long job of a migration is doing now (migrator.jobs), for `migrator status` on any machine: written
-- every few seconds while the job runs, deleted when its command ends; a row whose job was killed outright stays,
-- and status shows how long ago it was last heard from.
CREATE TABLE IF NOT EXISTS {schema}.jobs (
    migration   text NOT NULL,
    job         text NOT NULL,
    client      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    phase       text,
    done        bigint,
    total       bigint,
    rows_per_second double precision,
    pace        text,
    held_by     text,
    PRIMARY KEY (migration, job)
);
