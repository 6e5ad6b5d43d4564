"""The SQL `migrator plan` prints passes squawk, a PostgreSQL migration linter (only prefer-text-field off)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from migrator import operations
from migrator.spec import load_spec
from tests.conftest import SPECS

pytestmark = pytest.mark.unit


def _squawk() -> str:
    local = Path(sys.executable).parent / "squawk"
    found = str(local) if local.exists() else shutil.which("squawk")
    assert found, "squawk-cli is a dev dependency: pip install -e '.[dev]'"
    return found


@pytest.mark.parametrize("spec_path", [None, SPECS / "payments.toml", SPECS / "hostile.toml"])
def test_plan_passes_squawk(spec_path: Path | None, tmp_path: Path) -> None:
    """Every phase's planned SQL lints clean (timeouts set, CONCURRENTLY, NOT VALID then VALIDATE)."""
    spec = load_spec(spec_path)
    script = tmp_path / "plan.sql"
    script.write_text(operations.render_script(operations.plans(spec)))
    proc = subprocess.run(
        [_squawk(), "--exclude", "prefer-text-field", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
