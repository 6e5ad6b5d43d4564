"""Runbooks must not lie: every `$ migrator …` command on each state's page runs against a real database in
that state and succeeds."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from migrator import lifecycle, runbooks
from migrator.db import Database
from migrator.seed import seed
from migrator.spec import Spec
from tests.test_lifecycle import _advance

pytestmark = pytest.mark.db


@pytest.mark.parametrize("page", list(lifecycle.STATES))
def test_runbook_commands_run_in_their_state(
    page: str, db: Database, projects_spec: Spec, database_url: str, migrator_exe: str, tmp_path: Path
) -> None:
    """Each fenced console command of runbooks/<state>.md exits 0 on a database in that state."""
    text = runbooks.page(page)
    commands = runbooks.commands(text)
    assert commands, f"runbooks/{page}.md has no console commands"
    if lifecycle.stage(page).reversible:
        assert "## Roll back" in text or page == "legacy"
    else:
        assert lifecycle.NO_ROLLBACK.format(state=page) in text.replace("\n", " ")
    with db.connect() as c:
        seed(c, 500, dirty_ratio=0.0, random_seed=4)
    _advance(db, projects_spec, page)
    env = {**os.environ, "DATABASE_URL": database_url}
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "migrator", f"runbook command is not a migrator command: {command}"
        proc = subprocess.run(
            [migrator_exe, *argv[1:]], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False
        )
        assert proc.returncode == 0, f"runbooks/{page}.md: `{command}` exited {proc.returncode}: {proc.stderr}"


def test_runbook_cli_prints_current_state_page(db: Database, database_url: str, run_cli: object) -> None:
    """`migrator runbook` prints the page of the current state; --json lists its commands."""
    import json

    r = run_cli("--dsn", database_url, "--json", "runbook")  # type: ignore[operator]
    doc = json.loads(r.stdout)
    assert doc["state"] == "legacy"
    assert "migrator status" in doc["commands"]
