"""Event hooks (issue 20): real shell scripts in a directory receive every event of a migration (as environment
variables and JSON on stdin), a failing or slow hook only warns, and a `before-contract` gate vetoes contract."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from migrator import hooks
from migrator.db import Database
from migrator.engine.context import Context
from migrator.phases import switch_reads, validate
from migrator.phases.backfill import Backfill
from migrator.phases.expand import Expand
from migrator.phases.switch_reads import SwitchReads
from migrator.phases.switch_writes import SwitchWrites
from migrator.phases.validate import Validate
from migrator.seed import seed
from migrator.spec import Spec

pytestmark = pytest.mark.db

# Appends one line per call: the event's environment variables, then the JSON it read on stdin.
RECORDER = """#!/bin/sh
payload=$(cat)
printf '%s|%s|%s|%s\\n' "$MIGRATOR_EVENT" "$MIGRATOR_STATE" "$MIGRATOR_PHASE" "$payload" >> {log}
"""


def _hook(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(body)
    path.chmod(0o755)
    return path


def _events(log: Path) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(MIGRATOR_EVENT, MIGRATOR_STATE, MIGRATOR_PHASE, stdin JSON) per hook run, in order."""
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        event, state_, phase, payload = line.split("|", 3)
        out.append((event, state_, phase, json.loads(payload)))
    return out


@pytest.fixture
def seeded(db: Database) -> Database:
    """3,000 clean seeded rows."""
    with db.connect() as c:
        seed(c, 3000, dirty_ratio=0.0, random_seed=4)
    return db


def test_a_hook_receives_every_event(
    seeded: Database, database_url: str, run_cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An `any.*` hook sees phase start/success, state changes, pause/resume, throttled/unthrottled and the
    before-contract gate, each with env vars and a JSON payload naming the migration."""
    hooks, log = tmp_path / "hooks", tmp_path / "events.log"
    hooks.mkdir()
    _hook(hooks, "any.record", RECORDER.format(log=log))
    _hook(hooks, "notes.txt", "not a hook: not executable\n").chmod(0o644)
    monkeypatch.setenv("MIGRATOR_HOOK_DIR", str(hooks))
    url = ("--dsn", database_url)
    assert run_cli(*url, "expand").exit_code == 0
    assert run_cli(*url, "pause").exit_code == 0
    assert run_cli(*url, "resume").exit_code == 0
    holder = psycopg.connect(database_url)
    holder.execute("SELECT pg_catalog.txid_current()")
    time.sleep(1.2)
    release = threading.Timer(2.0, holder.commit)
    release.start()
    try:
        assert run_cli(*url, "backfill", "--max-transaction-age", "1").exit_code == 0
    finally:
        release.join()
        holder.close()
    for command in (["validate", "--accept-quarantine"], ["switch-reads"], ["switch-writes"]):
        assert run_cli(*url, *command).exit_code == 0
    r = run_cli(*url, "--yes", "contract", "--quiet-period", "0")
    assert r.exit_code == 0, r.stderr

    events = _events(log)
    names = [e[0] for e in events]
    for name in [
        "phase-start",
        "phase-success",
        "state-changed",
        "paused",
        "resumed",
        "throttled",
        "unthrottled",
        "before-contract",
    ]:
        assert name in names, f"{name} not in {names}"
    by_phase = [(e[0], e[2]) for e in events if e[2] == "backfill"]
    assert by_phase[0] == ("phase-start", "backfill")
    assert by_phase.index(("throttled", "backfill")) < by_phase.index(("unthrottled", "backfill"))
    assert by_phase[-2:] == [("phase-success", "backfill"), ("state-changed", "backfill")]
    throttled = next(e for e in events if e[0] == "throttled")
    assert throttled[3]["signal"] == "old_transaction"
    assert throttled[1] == "dual_write"
    changed = [(e[3]["from_state"], e[3]["state"]) for e in events if e[0] == "state-changed"]
    assert changed[0] == ("legacy", "dual_write")
    assert changed[-1] == ("write_new", "contracted")
    assert all(e[3]["migration"] == "core_project_split" for e in events)


@pytest.fixture
def write_new(seeded: Database, projects_spec: Spec) -> Database:
    """Seeded, then moved through the phases up to write_new."""
    ctx = Context(projects_spec, seeded)
    Expand().apply(ctx)
    Backfill().apply(ctx)
    Validate(validate.Options(accept_quarantine=True)).apply(ctx)
    SwitchReads(switch_reads.Options(percent=100)).apply(ctx)
    SwitchWrites().apply(ctx)
    return seeded


def test_a_gate_hook_vetoes_contract(write_new: Database, database_url: str, run_cli: Any, tmp_path: Path) -> None:
    """A before-contract hook that exits 1 refuses contract (exit 1, naming the hook and what it said), and the
    migration stays in write_new; once it exits 0, contract runs."""
    hooks, log = tmp_path / "hooks", tmp_path / "events.log"
    hooks.mkdir()
    gate = _hook(hooks, "before-contract.change-window", "#!/bin/sh\necho 'outside the change window' >&2\nexit 1\n")
    _hook(hooks, "any", RECORDER.format(log=log))
    args = ("--dsn", database_url, "--json", "--hook-dir", str(hooks), "--yes", "contract", "--quiet-period", "0")
    r = run_cli(*args)
    assert r.exit_code == 1
    assert str(gate) in r.stderr
    assert "outside the change window" in r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["state"] == "write_new"
    assert [e[0] for e in _events(log)] == ["phase-start", "phase-failure"]
    assert "outside the change window" in _events(log)[-1][3]["error"]

    gate.write_text("#!/bin/sh\nexit 0\n")
    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["state"] == "contracted"


def test_a_failing_or_slow_hook_only_warns(seeded: Database, database_url: str, run_cli: Any, tmp_path: Path) -> None:
    """A hook that exits non-zero, or outlives --hook-timeout, is warned about; the phase still succeeds."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    _hook(hooks, "phase-start.broken", "#!/bin/sh\necho 'webhook unreachable' >&2\nexit 7\n")
    _hook(hooks, "phase-success.slow", "#!/bin/sh\nexec sleep 30\n")
    t0 = time.monotonic()
    r = run_cli("--dsn", database_url, "--hook-dir", str(hooks), "--hook-timeout", "0.5", "expand")
    assert r.exit_code == 0, r.stderr
    assert time.monotonic() - t0 < 20
    assert "phase-start.broken on phase-start: exit 7: webhook unreachable" in r.stderr
    assert "phase-success.slow on phase-success: no answer within 0.5 s" in r.stderr


def test_validation_failed_fires_with_the_mismatches(
    write_new: Database, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    """A validation that finds a corrupted split row fires validation-failed (with the count) and phase-failure."""
    hooks, log = tmp_path / "hooks", tmp_path / "events.log"
    hooks.mkdir()
    _hook(hooks, "validation-failed", RECORDER.format(log=log))
    _hook(hooks, "phase-failure.sh", RECORDER.format(log=log))
    with psycopg.connect(database_url) as c:  # one transaction; the sync triggers off for this write only
        c.execute("SET LOCAL session_replication_role = replica")
        c.execute("UPDATE public.projects SET name = 'tampered' WHERE id = (SELECT min(id) FROM public.projects)")
    r = run_cli("--dsn", database_url, "--hook-dir", str(hooks), "validate")
    assert r.exit_code == 1, r.stderr
    events = _events(log)
    assert [e[0] for e in events] == ["validation-failed", "phase-failure"]
    assert events[0][3]["mismatches"] >= 1
    assert events[0][2] == "validate"


def test_quarantine_grew_fires_with_the_rows_the_backfill_quarantined(
    db: Database, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    """A backfill that quarantines dirty rows fires quarantine-grew, before its phase-success, with every such row."""
    with db.connect() as c:
        seed(c, 3000, dirty_ratio=0.05, random_seed=4)
    hooks, log = tmp_path / "hooks", tmp_path / "events.log"
    hooks.mkdir()
    _hook(hooks, "quarantine-grew", RECORDER.format(log=log))
    _hook(hooks, "phase-success", RECORDER.format(log=log))
    url = ("--dsn", database_url, "--hook-dir", str(hooks))
    assert run_cli(*url, "expand").exit_code == 0
    r = run_cli(*url, "backfill")
    assert r.exit_code == 0, r.stderr
    with db.connect(autocommit=True) as c:
        row = c.execute("SELECT count(*) FROM migrator.quarantine").fetchone()
    assert row is not None
    quarantined = row[0]
    events = [e for e in _events(log) if e[2] == "backfill"]
    assert quarantined > 0
    assert [e[0] for e in events][-1] == "phase-success"
    assert sum(e[3]["rows"] for e in events if e[0] == "quarantine-grew") == quarantined


def test_a_gate_hook_vetoes_finalize(write_new: Database, database_url: str, run_cli: Any, tmp_path: Path) -> None:
    """A before-finalize hook that exits 1 refuses finalize (exit 1, naming the hook) and the archive stays; once
    it exits 0, finalize runs."""
    assert run_cli("--dsn", database_url, "--yes", "contract", "--quiet-period", "0").exit_code == 0
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    gate = _hook(hooks, "before-finalize", "#!/bin/sh\necho 'archive not yet copied to cold storage' >&2\nexit 1\n")
    args = ("--dsn", database_url, "--json", "--hook-dir", str(hooks), "--yes", "finalize")
    args += ("--min-age", "0", "--quiet-period", "0")
    r = run_cli(*args)
    assert r.exit_code == 1
    assert str(gate) in r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["state"] == "contracted"
    with write_new.connect() as c:
        assert c.execute("SELECT to_regclass('public.core_project_archived') IS NOT NULL").fetchone() == (True,)
    gate.write_text("#!/bin/sh\nexit 0\n")
    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["state"] == "finalized"


@pytest.mark.unit
def test_the_readme_lists_every_event_and_gate() -> None:
    """README's Observability section names every hook event and gate the code fires."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Observability", 1)[1].split("\n## ", 1)[0]
    for name in (*hooks.EVENTS, *hooks.GATES):
        assert f"`{name}`" in section, name


def test_hooks_configured_in_the_spec_file_run(
    seeded: Database, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    """A spec file's [hooks] table (dir relative to the file, timeout) runs the hooks without --hook-dir; a missing
    directory is a clear error before anything runs."""
    (tmp_path / "on-call").mkdir()
    log = tmp_path / "events.log"
    _hook(tmp_path / "on-call", "any", RECORDER.format(log=log))
    text = (Path(__file__).parent.parent / "migrator" / "specs" / "projects.toml").read_text()
    spec_file = tmp_path / "split.toml"
    spec_file.write_text(text + '\n[hooks]\ndir = "on-call"\ntimeout = 5\n')
    r = run_cli("--dsn", database_url, "--spec", str(spec_file), "expand")
    assert r.exit_code == 0, r.stderr
    assert ("phase-success", "dual_write", "expand") in [e[:3] for e in _events(log)]

    spec_file.write_text(text + '\n[hooks]\ndir = "nowhere"\n')
    r = run_cli("--dsn", database_url, "--spec", str(spec_file), "status")
    assert r.exit_code != 0
    assert "[hooks] dir of the spec" in r.stderr
