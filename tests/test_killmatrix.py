"""The kill matrix (DESIGN.md §Transitions, issue 17): a transition killed after any statement boundary — every
statement the Action runner executes and every reverse-backfill chunk commit — leaves a state that `status`
describes, and re-running the same command (or `rollback`) completes it with no hand edit: the state is the one
expected, no progress is left, the split tables equal the legacy table (or its archive) and the foreign keys
point where the state says.

Kills are in-process (actions.kill_after: the session is closed, as a kill does, and Killed is raised) for
contract, the rollback from contracted, expand and switch-writes, each followed by the same command again; for
contract also followed by `rollback` (at each commit). Two cases SIGKILL a real `migrator` process
(MIGRATOR_KILL_AT). The kill points, by default: the first boundary and every commit — every database state a kill
can leave, since a kill at any other boundary rolls back an open transaction. MIGRATOR_KILLMATRIX=full kills at
every boundary instead. Each point's database is a copy of a template already in the starting state.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from migrator import guards, operations, state, status
from migrator.db import Database, advisory_lock
from migrator.engine import actions
from migrator.engine.context import Context
from migrator.errors import GuardFailed, WrongState
from migrator.phases import contract, finalize
from migrator.phases.base import RollbackOptions
from migrator.phases.contract import Contract
from migrator.phases.expand import Expand
from migrator.phases.finalize import Finalize
from migrator.phases.switch_writes import SwitchWrites
from migrator.seed import seed
from migrator.spec import Spec, load_spec
from migrator.sqlgen import names
from tests.conftest import Server
from tests.test_lifecycle import _advance

pytestmark = pytest.mark.db

ROWS = 300
CONTRACT = Contract(contract.Options(quiet_period=0, compat_view=True))
FINALIZE = Finalize(finalize.Options(min_age=0, quiet_period=0))


def _rollback_options() -> RollbackOptions:
    """Rollback options with no quiet-period wait (the matrix has no application writing)."""
    wanted: dict[str, Any] = {"quiet_period": 0.0, "wait": 0.0}
    have = {f.name for f in dataclasses.fields(RollbackOptions)}
    return RollbackOptions(**{k: v for k, v in wanted.items() if k in have})


# -- databases: templates in a phase's starting state, one copy per kill point -------------------------------


def _create(server: Server, name: str, template: str = "template0") -> str:
    with psycopg.connect(server.admin_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    return server.url_for(name)


def _drop(server: Server, name: str) -> None:
    with psycopg.connect(server.admin_url, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def templates(pg_server: Server) -> Iterator[dict[str, str]]:
    """Template databases by state: legacy (seeded), read_new, write_new and contracted (with writes made while
    contracted)."""
    spec = load_spec()
    tag = uuid.uuid4().hex[:8]
    made: dict[str, str] = {}
    try:
        for state_, before in (
            ("legacy", None),
            ("read_new", "legacy"),
            ("write_new", "read_new"),
            ("contracted", "write_new"),
        ):
            name = f"km_{tag}_{state_}"
            url = _create(pg_server, name, made[before] if before else "template0")
            made[state_] = name
            db = Database(url)
            try:
                if before is None:
                    with db.connect() as c:
                        seed(c, ROWS, dirty_ratio=0.0, random_seed=11)
                else:
                    _advance(db, spec, state_)
                if state_ == "contracted":
                    with db.connect(autocommit=True) as c:
                        _write_while_contracted(c)
            finally:
                db.dispose()
        yield made
    finally:
        for name in made.values():
            _drop(pg_server, name)


def _write_while_contracted(c: psycopg.Connection[Any]) -> None:
    """Writes through the split tables and the compat view, so the reverse backfill has rows to refill."""
    c.execute("UPDATE public.projects SET name = 'changed while contracted' WHERE id BETWEEN 10 AND 40")
    c.execute("DELETE FROM public.core_importantdate WHERE project_id = 43")
    c.execute("DELETE FROM public.core_project_attachments WHERE project_id = 43")
    c.execute("DELETE FROM public.projects WHERE id = 43")
    c.execute(
        "INSERT INTO public.core_project (name, project_type, owner_id, goal_description, study_frequency) "
        "SELECT 'via view ' || g, 'self_study', (SELECT min(id) FROM public.auth_user), 'g', 'daily' "
        "FROM generate_series(1, 20) AS g"
    )


@pytest.fixture
def copy_of(pg_server: Server, templates: dict[str, str]) -> Iterator[Callable[[str], Database]]:
    """copy_of(state): a fresh database copied from that state's template (dropped after the test)."""
    made: list[tuple[str, Database]] = []

    def make(state_: str) -> Database:
        name = f"km_{uuid.uuid4().hex[:12]}"
        db = Database(_create(pg_server, name, templates[state_]))
        made.append((name, db))
        return db

    yield make
    for name, db in made:
        db.dispose()
        _drop(pg_server, name)


# -- what every end state must satisfy -----------------------------------------------------------------------


def _fk_targets(c: psycopg.Connection[Any], spec: Spec) -> set[str]:
    """Where each referencing column's foreign keys point (regclass text), over every spec reference."""
    out: set[str] = set()
    for ref in spec.references:
        rows = c.execute(
            "SELECT c.confrelid::regclass::text FROM pg_catalog.pg_constraint AS c "
            "JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) "
            "WHERE c.contype = 'f' AND c.conrelid = to_regclass(%s) AND a.attname = %s",
            [f"{ref.schema_}.{ref.table}", ref.column],
        ).fetchall()
        assert len(rows) == 1, f"{ref.table}.{ref.column} has {len(rows)} foreign keys: {rows}"
        out.add(rows[0][0])
    return out


def _check(db: Database, spec: Spec, expected: str, where: str) -> None:
    """The end state: `expected`, nothing in flight, data equal on both sides, FKs where the state says."""
    ctx = Context(spec, db)
    with db.connect(autocommit=True) as c:
        assert state.read(c, spec).state == expected, where
        assert state.read_progress(c, spec) is None, where
        if expected == "contracted":
            archived = spec.model_copy(
                update={"source": spec.source.model_copy(update={"table": names.archive_name(spec)})}
            )
            assert guards.diff(c, archived) == [], where
            assert _fk_targets(c, spec) == {f"{spec.base.schema_}.{spec.base.table}"}, where
        else:
            assert guards.diff(c, spec) == [], where
            assert _fk_targets(c, spec) == {f"{spec.source.schema_}.{spec.source.table}"}, where
    report = (CONTRACT if expected == "contracted" else SwitchWrites()).verify(ctx)
    if expected in ("contracted", "write_new"):
        assert report.ok, f"{where}: {report.failures}"


def _state_and_progress(db: Database, spec: Spec) -> tuple[str, dict[str, Any] | None]:
    with db.connect(autocommit=True) as c:
        return state.read(c, spec).state, state.read_progress(c, spec)


def _run_killed(k: int, fn: Callable[[], object]) -> bool:
    """Run fn with the kill hook set at boundary k; True when it was killed there."""
    actions.kill_after(k)
    try:
        fn()
        return False
    except actions.Killed:
        return True
    finally:
        actions.kill_after(None)


def _boundaries(fn: Callable[[], object]) -> tuple[int, list[int]]:
    """How many statement boundaries an uninterrupted run passes, and which of them follow a commit."""
    actions.kill_after(None, trace=True)
    try:
        fn()
        return actions.boundaries(), actions.committed_boundaries()
    finally:
        actions.kill_after(None)


# MIGRATOR_KILLMATRIX=full: kill at every boundary, not only at the sample below (~3x the points and the time).
FULL = os.environ.get("MIGRATOR_KILLMATRIX") == "full"


def _points(total: int, committed: list[int]) -> list[int]:
    """The kill points: every boundary with MIGRATOR_KILLMATRIX=full; by default the first boundary (nothing
    committed yet) and every commit. A kill at any other boundary rolls back an open transaction and leaves the
    database as the commit before it did, a point already in the sample (the swap's own, between its statement and
    its COMMIT, has a test of its own)."""
    return list(range(1, total + 1)) if FULL else sorted({1, *committed})


# -- contract ------------------------------------------------------------------------------------------------


def test_contract_killed_then_rerun(copy_of: Callable[[str], Database], projects_spec: Spec) -> None:
    """contract killed at each kill point: status says so, a second `contract` ends in contracted."""
    total, committed = _boundaries(lambda: CONTRACT.apply(Context(projects_spec, copy_of("write_new"))))
    assert total == sum(len(actions.statements(a, None)) for a in CONTRACT.plan(Context(projects_spec)))
    for k in _points(total, committed):
        db = copy_of("write_new")
        ctx, where = Context(projects_spec, db), f"contract killed after statement {k} of {total}"
        assert _run_killed(k, lambda: CONTRACT.apply(ctx)), where  # noqa: B023 — called at once
        now, progress = _state_and_progress(db, projects_spec)
        # The swap and the state change commit together: contracted only after the very last statement.
        assert now == ("contracted" if k == total else "write_new"), where
        st = status.collect(db, projects_spec)
        assert (st.interrupted is not None) == (progress is not None), where
        if progress is not None:
            assert (st.interrupted or "").startswith("contract interrupted after step"), where
            assert st.next_command == "contract", where
        if now == "contracted":
            with pytest.raises(WrongState):
                CONTRACT.apply(ctx)
        else:
            CONTRACT.apply(ctx)
        _check(db, projects_spec, "contracted", where)
        db.dispose()


def test_contract_killed_at_every_commit_then_rolled_back(
    copy_of: Callable[[str], Database], projects_spec: Spec
) -> None:
    """contract killed after each COMMIT but the last: `rollback` moves the re-pointed FKs back and reaches
    read_new, legacy equal to split."""
    _, commits = _boundaries(lambda: CONTRACT.apply(Context(projects_spec, copy_of("write_new"))))
    assert len(commits) == len(CONTRACT.plan(Context(projects_spec)))
    for k in commits[:-1]:
        db = copy_of("write_new")
        ctx, where = Context(projects_spec, db), f"contract killed after statement {k}, then rollback"
        assert _run_killed(k, lambda: CONTRACT.apply(ctx)), where  # noqa: B023 — called at once
        assert operations.rollback(ctx, None, _rollback_options()) == [("write_new", "read_new")], where
        _check(db, projects_spec, "read_new", where)
        db.dispose()


def test_interrupted_contract_then_rollback_to_legacy_leaves_no_fk_on_the_split_side(
    copy_of: Callable[[str], Database], projects_spec: Spec
) -> None:
    """Finding 2: after a contract killed once an FK moved to the base table, `rollback --to legacy` gives the
    FKs back to the legacy table: a date for a new legacy project inserts, and expand runs again."""
    db = copy_of("write_new")
    ctx = Context(projects_spec, db)
    first_commit = len(actions.statements(CONTRACT.plan(ctx)[0], None))
    # After the validate step's COMMIT: the new FK to the base table is in place and valid.
    assert _run_killed(2 * first_commit, lambda: CONTRACT.apply(ctx))
    operations.rollback(ctx, "legacy", _rollback_options())
    with db.connect(autocommit=True) as c:
        assert state.read(c, projects_spec).state == "legacy"
        assert _fk_targets(c, projects_spec) == {"public.core_project"}
        pid = c.execute(
            "INSERT INTO public.core_project (name, project_type, owner_id, goal_description, study_frequency) "
            "VALUES ('after rollback', 'self_study', (SELECT min(id) FROM public.auth_user), 'g', 'daily') "
            "RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        c.execute(
            "INSERT INTO public.core_importantdate (project_id, title, date) VALUES (%s, 'exam', current_date)", [pid]
        )
    Expand().apply(ctx)
    with db.connect(autocommit=True) as c:
        assert state.read(c, projects_spec).state == "dual_write"


def test_rollback_killed_while_undoing_an_interrupted_contract(
    copy_of: Callable[[str], Database], projects_spec: Spec
) -> None:
    """A rollback killed while it moves an interrupted contract's FKs back is finished by a second rollback."""
    db = copy_of("write_new")
    ctx = Context(projects_spec, db)
    step = len(actions.statements(CONTRACT.plan(ctx)[0], None))
    assert _run_killed(4 * step, lambda: CONTRACT.apply(ctx))  # the first FK moved, the second added
    assert _run_killed(step, lambda: operations.rollback(ctx, None, _rollback_options()))
    now, progress = _state_and_progress(db, projects_spec)
    assert now == "write_new"
    assert progress is not None
    assert progress["command"] == "contract"
    assert operations.rollback(ctx, None, _rollback_options()) == [("write_new", "read_new")]
    _check(db, projects_spec, "read_new", "rollback killed during the undo, then again")


def test_resumed_contract_does_not_wait_the_quiet_period_again(
    copy_of: Callable[[str], Database], projects_spec: Spec
) -> None:
    """contract waited out the quiet period, then was killed: run again at once without --wait, it goes through
    (the quiet period counts from the last direct legacy write, which the first run recorded)."""
    db = copy_of("write_new")
    ctx = Context(projects_spec, db)
    with db.connect(autocommit=True) as c:
        c.execute("UPDATE public.core_project SET name = 'an old instance' WHERE id = 5")
    waiting = Contract(contract.Options(quiet_period=1.0, compat_view=True, wait=30))
    assert _run_killed(len(actions.statements(waiting.plan(ctx)[0], None)), lambda: waiting.apply(ctx))
    Contract(contract.Options(quiet_period=1.0, compat_view=True, wait=0)).apply(ctx)
    _check(db, projects_spec, "contracted", "resumed contract")


def test_contract_swap_and_state_commit_together(copy_of: Callable[[str], Database], projects_spec: Spec) -> None:
    """Finding 1: killed right after the swap's statement ran (before its COMMIT), nothing of the swap is left
    and the state is write_new; killed after its COMMIT, the state is contracted — never an archive in write_new."""
    total = sum(len(actions.statements(a, None)) for a in CONTRACT.plan(Context(projects_spec)))
    for k, expected in ((total - 1, "write_new"), (total, "contracted")):
        db = copy_of("write_new")
        assert _run_killed(k, lambda: CONTRACT.apply(Context(projects_spec, db)))  # noqa: B023 — called at once
        with db.connect(autocommit=True) as c:
            archived = c.execute(
                "SELECT to_regclass(%s) IS NOT NULL", [f"public.{names.archive_name(projects_spec)}"]
            ).fetchone()[0]  # type: ignore[index]
            assert (state.read(c, projects_spec).state, archived) == (expected, expected == "contracted")
        db.dispose()


# -- the rollback from contracted ----------------------------------------------------------------------------


def _rollback(db: Database, spec: Spec) -> list[tuple[str, str]]:
    return operations.rollback(Context(spec, db), None, _rollback_options())


def test_contracted_rollback_killed_then_rerun(copy_of: Callable[[str], Database], projects_spec: Spec) -> None:
    """The rollback from contracted killed at each kill point (reverse-backfill chunks included): status says so,
    and a second `rollback` ends in write_new with legacy equal to split and the FKs on the legacy table."""
    total, committed = _boundaries(lambda: _rollback(copy_of("contracted"), projects_spec))
    assert len(committed) > 8  # restore, both reverse passes' chunks, six FK steps
    for k in _points(total, committed):
        db = copy_of("contracted")
        where = f"rollback from contracted killed after boundary {k} of {total}"
        killed = _run_killed(k, lambda: _rollback(db, projects_spec))  # noqa: B023 — called at once
        now, progress = _state_and_progress(db, projects_spec)
        # The reverse backfill sizes its chunks by time: a run may pass a chunk boundary fewer than the one counted
        # (the last points then fall after its end), and only the last boundary of a run leaves write_new.
        assert killed or now == "write_new", where
        assert (now == "contracted") == (progress is not None or k < committed[0]), where
        st = status.collect(db, projects_spec)
        if progress is not None:
            assert (st.interrupted or "").startswith("rollback from contracted interrupted"), where
            assert st.next_command == "rollback", where
            restored = progress["done"] >= 1
            assert st.tables[0].role == ("legacy (restored)" if restored else "legacy (archived)"), where
        if now == "contracted":
            assert _rollback(db, projects_spec) == [("contracted", "write_new")], where
        _check(db, projects_spec, "write_new", where)
        db.dispose()


def test_contracted_rollback_rerun_after_its_validation_refused(
    copy_of: Callable[[str], Database], projects_spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 3: the rollback from contracted stopped by its own final validation (the table already renamed
    back, the syncs on) is finished by a second `rollback`, not refused with 42809 "not a view"."""
    db = copy_of("contracted")
    refused = GuardFailed("`rollback` refused: 1 row differs")

    def refuse(*_: object) -> None:
        raise refused

    monkeypatch.setattr(guards, "require_in_sync", refuse)
    with pytest.raises(GuardFailed):
        _rollback(db, projects_spec)
    monkeypatch.undo()
    st = status.collect(db, projects_spec)
    assert st.state == "contracted"
    assert "after step 2 of" in (st.interrupted or "")
    assert [t.role for t in st.tables][:1] == ["legacy (restored)"]
    assert _rollback(db, projects_spec) == [("contracted", "write_new")]
    _check(db, projects_spec, "write_new", "after the refused validation")


def test_status_tells_a_transition_still_running_from_an_interrupted_one(
    copy_of: Callable[[str], Database], projects_spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another session holds the migration's lock, recorded progress is shown as running (by whom), with no
    command to run; once the lock is free, the same progress is shown as interrupted with the way out."""
    db = copy_of("contracted")

    def refuse(*_: object) -> None:
        raise GuardFailed("`rollback` refused: 1 row differs")

    monkeypatch.setattr(guards, "require_in_sync", refuse)
    with pytest.raises(GuardFailed):
        _rollback(db, projects_spec)
    monkeypatch.undo()
    with db.raw_connect(autocommit=True) as holder:
        holder.execute("SET application_name = 'migrator-elsewhere'")
        with advisory_lock(holder, *state.lock_parts(projects_spec)):
            pid = holder.info.backend_pid
            running = status.collect(db, projects_spec)
            assert running.interrupted is None
            assert running.next_command is None
            assert (running.in_progress or "").startswith("rollback from contracted running, after step 2 of")
            assert f"pid {pid} (migrator-elsewhere" in (running.in_progress or "")
    left = status.collect(db, projects_spec)
    assert left.in_progress is None
    assert left.next_command == "rollback"
    assert "after step 2 of" in (left.interrupted or "")
    db.dispose()


# -- finalize -----------------------------------------------------------------------------------------------


def _check_finalized(db: Database, spec: Spec, where: str) -> None:
    """finalized, nothing in flight, the archive gone, and an insert without an id gets a new key."""
    with db.connect(autocommit=True) as c:
        assert state.read(c, spec).state == "finalized", where
        assert state.read_progress(c, spec) is None, where
        new = c.execute(
            "INSERT INTO public.projects (name, project_type, owner_id, is_draft, created_at, updated_at) "
            "VALUES ('after finalize', 'school', (SELECT min(id) FROM public.auth_user), true, now(), now()) "
            "RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        assert new > c.execute("SELECT max(id) FROM public.projects WHERE id <> %s", [new]).fetchone()[0], where  # type: ignore[index]
    report = FINALIZE.verify(Context(spec, db))
    assert report.ok, f"{where}: {report.failures}"


def test_finalize_killed_then_rerun(copy_of: Callable[[str], Database], projects_spec: Spec) -> None:
    """finalize killed at each kill point: status says so, a second `finalize` ends in finalized; killed after its
    last statement, it is finalized already and a second run is a no-op."""
    total, committed = _boundaries(lambda: FINALIZE.apply(Context(projects_spec, copy_of("contracted"))))
    for k in _points(total, committed):
        db = copy_of("contracted")
        ctx, where = Context(projects_spec, db), f"finalize killed after statement {k} of {total}"
        assert _run_killed(k, lambda: FINALIZE.apply(ctx)), where  # noqa: B023 — called at once
        now, progress = _state_and_progress(db, projects_spec)
        # The archive goes with the state change: finalized only after the very last statement.
        assert now == ("finalized" if k == total else "contracted"), where
        if progress is not None:
            st = status.collect(db, projects_spec)
            assert (st.interrupted or "").startswith("finalize interrupted after step"), where
            assert st.next_command == "finalize", where
        again = Finalize(FINALIZE.options)
        again.apply(ctx)
        assert again.noop == (k == total), where
        _check_finalized(db, projects_spec, where)
        db.dispose()


def test_finalize_killed_then_rolled_back(copy_of: Callable[[str], Database], projects_spec: Spec) -> None:
    """finalize killed after each commit but its last (the view and the sync functions dropped, the archive
    still there): `rollback` reaches write_new, legacy equal to split, every write kept."""
    _, commits = _boundaries(lambda: FINALIZE.apply(Context(projects_spec, copy_of("contracted"))))
    for k in commits[:-1]:
        db = copy_of("contracted")
        ctx, where = Context(projects_spec, db), f"finalize killed after statement {k}, then rollback"
        assert _run_killed(k, lambda: FINALIZE.apply(ctx)), where  # noqa: B023 — called at once
        assert operations.rollback(ctx, None, _rollback_options()) == [("contracted", "write_new")], where
        _check(db, projects_spec, "write_new", where)
        db.dispose()


# -- expand and switch-writes -----------------------------------------------------


def test_expand_killed_then_rerun(copy_of: Callable[[str], Database], projects_spec: Spec) -> None:
    """expand killed at each kill point: a second `expand` ends in dual_write, FKs untouched."""
    total, committed = _boundaries(lambda: Expand().apply(Context(projects_spec, copy_of("legacy"))))
    for k in _points(total, committed):
        db = copy_of("legacy")
        ctx, where = Context(projects_spec, db), f"expand killed after statement {k} of {total}"
        assert _run_killed(k, lambda: Expand().apply(ctx)), where  # noqa: B023 — called at once
        if _state_and_progress(db, projects_spec)[0] == "legacy":
            Expand().apply(ctx)
        with db.connect(autocommit=True) as c:
            assert state.read(c, projects_spec).state == "dual_write", where
            assert _fk_targets(c, projects_spec) == {"public.core_project"}, where
        report = Expand().verify(ctx)
        assert report.ok, f"{where}: {report.failures}"
        db.dispose()


def test_switch_writes_killed_then_rerun(copy_of: Callable[[str], Database], projects_spec: Spec) -> None:
    """switch-writes killed at each kill point: a second `switch-writes` ends in write_new, in sync."""
    total, committed = _boundaries(lambda: SwitchWrites().apply(Context(projects_spec, copy_of("read_new"))))
    for k in _points(total, committed):
        db = copy_of("read_new")
        ctx, where = Context(projects_spec, db), f"switch-writes killed after statement {k} of {total}"
        assert _run_killed(k, lambda: SwitchWrites().apply(ctx)), where  # noqa: B023 — called at once
        if _state_and_progress(db, projects_spec)[0] == "read_new":
            SwitchWrites().apply(ctx)
        _check(db, projects_spec, "write_new", where)
        db.dispose()


# -- real processes: kill -9 -------------------------------------------------------------------------------


def _cli(exe: str, url: str, *args: str, kill_at: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != actions.KILL_ENV}
    env["DATABASE_URL"] = url
    if kill_at is not None:
        env[actions.KILL_ENV] = str(kill_at)
    return subprocess.run([exe, "--yes", *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_kill_9_during_contract_and_its_rollback(
    copy_of: Callable[[str], Database], projects_spec: Spec, migrator_exe: str
) -> None:
    """A real `migrator contract` SIGKILLed after its second FK step commits, then a real `migrator rollback`
    from contracted SIGKILLed after its restore: running each command again finishes it."""
    db = copy_of("write_new")
    url = db.dsn
    contract_args = ("contract", "--quiet-period", "0", "--compat-view")
    first_commit = len(actions.statements(CONTRACT.plan(Context(projects_spec))[0], None))
    killed = _cli(migrator_exe, url, *contract_args, kill_at=2 * first_commit)
    assert killed.returncode == -9, killed.stderr
    assert _state_and_progress(db, projects_spec)[1] is not None
    again = _cli(migrator_exe, url, *contract_args)
    assert again.returncode == 0, again.stderr
    _check(db, projects_spec, "contracted", "contract after kill -9")
    killed = _cli(migrator_exe, url, "rollback", "--quiet-period", "0", kill_at=first_commit)
    assert killed.returncode == -9, killed.stderr
    assert _state_and_progress(db, projects_spec)[0] == "contracted"
    again = _cli(migrator_exe, url, "rollback", "--quiet-period", "0")
    assert again.returncode == 0, again.stderr
    _check(db, projects_spec, "write_new", "rollback after kill -9")
