"""Golden tests: the SQL `migrator plan` renders for both specs, compared without a database.

Set UPDATE_GOLDEN=1 to rewrite the golden files after an intended change, then review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from migrator import operations
from migrator.spec import Spec

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parent / "golden"


def _check(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.sql"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} is missing; run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"rendered SQL differs from {path}; UPDATE_GOLDEN=1 rewrites it"


@pytest.mark.parametrize("phase", list(operations.PHASES))
def test_projects_plan_matches_golden(projects_spec: Spec, phase: str) -> None:
    """The projects spec renders exactly the reviewed SQL for each phase."""
    _check(f"projects_{phase}", operations.render_script(operations.plans(projects_spec, [phase])))


@pytest.mark.parametrize("phase", list(operations.PHASES))
def test_payments_plan_matches_golden(payments_spec: Spec, phase: str) -> None:
    """The payments spec renders exactly the reviewed SQL for each phase."""
    _check(f"payments_{phase}", operations.render_script(operations.plans(payments_spec, [phase])))


def test_identifiers_are_always_quoted(payments_spec: Spec) -> None:
    """Every spec name appears only as a quoted identifier in the rendered SQL."""
    text = operations.render_script(operations.plans(payments_spec))
    assert '"billing_v2"."payments"' in text
    assert '"card_payments"' in text
    assert " billing_v2.payments" not in text
