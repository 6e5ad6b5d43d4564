"""CLI conventions: exit codes, one-line errors, masked passwords, help with examples, README coverage."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest

from migrator.cli import cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.unit
def test_bad_dsn_exits_3_without_password(run_cli: Any) -> None:
    """A DSN that cannot connect exits 3 with one line that does not contain the password."""
    r = run_cli("--dsn", "postgresql://nobody:secret@127.0.0.1:1/x", "status")
    assert r.exit_code == 3
    assert "secret" not in r.stdout + r.stderr
    assert "cannot connect" in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.unit
def test_bad_dsn_verbose_shows_traceback_still_masked(run_cli: Any) -> None:
    """With -v the traceback is shown, and the password is still not printed."""
    r = run_cli("-v", "--dsn", "postgresql://nobody:s3cr3tpw@127.0.0.1:1/x", "status")
    assert r.exit_code == 3
    assert "Traceback" in r.stderr
    assert "s3cr3tpw" not in r.stdout + r.stderr


@pytest.mark.unit
def test_unparseable_dsn_is_bad_input(run_cli: Any) -> None:
    """A DSN that is not a PostgreSQL URL exits 2 and names the problem."""
    r = run_cli("--dsn", "mysql://u:hunter2@h/db", "status")
    assert r.exit_code == 2
    assert "not a PostgreSQL DSN" in r.stderr
    assert "hunter2" not in r.stderr


@pytest.mark.unit
def test_spec_with_unknown_key_exits_2(run_cli: Any, tmp_path: Path) -> None:
    """A spec with an unknown key exits 2 naming the key."""
    text = (ROOT / "migrator" / "specs" / "projects.toml").read_text().replace("link_column", "link_colum")
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    r = run_cli("--spec", str(bad), "plan")
    assert r.exit_code == 2
    assert "base.link_colum: unknown key 'link_colum'" in r.stderr


@pytest.mark.unit
def test_plan_needs_no_database(run_cli: Any) -> None:
    """`plan` renders from the spec alone: an unreachable DSN does not matter."""
    r = run_cli("--dsn", "postgresql://nobody@127.0.0.1:1/x", "plan", "expand")
    assert r.exit_code == 0, r.stderr
    assert 'CREATE TABLE IF NOT EXISTS "public"."projects"' in r.stdout
    assert "CREATE INDEX CONCURRENTLY" in r.stdout


@pytest.mark.unit
def test_plan_json(run_cli: Any) -> None:
    """`plan --json` lists each phase's steps with their SQL."""
    r = run_cli("--json", "plan")
    doc = json.loads(r.stdout)
    assert doc[0]["phase"] == "expand"
    assert any("NOT VALID" in step["sql"] for step in doc[0]["steps"])


@pytest.mark.unit
def test_plan_accepts_every_phase() -> None:
    """`migrator plan PHASE` offers exactly the phases the planner knows, in order."""
    from migrator import lifecycle, operations

    assert tuple(operations.PHASES) == lifecycle.PHASE_NAMES
    choices = cli.commands["plan"].params[0].type.choices  # type: ignore[attr-defined]
    assert tuple(choices) == lifecycle.PHASE_NAMES


@pytest.mark.unit
def test_every_command_has_an_example_in_help() -> None:
    """`--help` of every command shows an Examples section."""
    for name, cmd in cli.commands.items():
        ctx = click.Context(cmd, info_name=name)
        assert "Examples:" in cmd.get_help(ctx), f"`migrator {name} --help` has no example"


@pytest.mark.unit
def test_readme_mentions_every_command() -> None:
    """Every CLI command is documented in README.md."""
    readme = (ROOT / "README.md").read_text()
    for name in cli.commands:
        assert re.search(rf"migrator[^\n`]* {re.escape(name)}\b", readme), f"README.md does not mention `{name}`"


@pytest.mark.unit
def test_console_script_usage_error_exits_2(migrator_exe: str) -> None:
    """A real process with an unknown option exits 2 (bad input)."""
    proc = subprocess.run([migrator_exe, "status", "--nope"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "No such option" in proc.stderr


@pytest.mark.db
def test_status_json_on_fresh_database(run_cli: Any, database_url: str) -> None:
    """`status --json` on an empty database reports state legacy and absent tables."""
    r = run_cli("--dsn", database_url, "--json", "status")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["state"] == "legacy"
    assert doc["next_command"] == "expand"
    assert {t["table"]: t["exists"] for t in doc["tables"]}["public.core_project"] is False


@pytest.mark.db
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_backfill_exits_130_or_143_and_resumes(
    db: Any, database_url: str, migrator_exe: str, sig: signal.Signals, code: int
) -> None:
    """Ctrl-C (130) or SIGTERM (143) during a backfill says what to run next; running it again finishes the job."""
    from migrator.engine.context import Context
    from migrator.phases.expand import Expand
    from migrator.seed import seed
    from migrator.spec import load_spec

    with db.connect() as c:
        seed(c, 3000, dirty_ratio=0.0, random_seed=5)
    Expand().apply(Context(load_spec(None), db))
    argv = [migrator_exe, "--dsn", database_url, "--json", "backfill", "--max-rows-per-second", "500"]
    # The child must get the default SIGINT disposition even when this test runs in a shell's background job
    # (which ignores SIGINT, and a process inherits that).
    with subprocess.Popen(
        ["env", "--default-signal=INT", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait for the first copied chunk
            if '"event": "progress"' in line:
                break
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "interrupted" in err
    assert "run the same command again" in err
    done = subprocess.run(argv[:5], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["state"] == "backfilled"
