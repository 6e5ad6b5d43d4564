"""Each domain rule, rendered once by migrator.sqlgen.rules, tested once here (a table test of the SQL text), and
shown to be the very text the backfill, the validation, the views and the triggers use."""

from __future__ import annotations

import pytest

from migrator.engine.context import Context
from migrator.phases.backfill import Backfill
from migrator.phases.validate import Validate
from migrator.spec import Spec, spec_from_toml
from migrator.sqlgen import rules, triggers, views
from migrator.sqlgen.compose import as_text, ident

pytestmark = pytest.mark.unit

SPEC = """
name = "t_split"
[source]
table = "t"
primary_key = "id"
discriminator = "kind"
[base]
table = "t_base"
[base.columns]
kind = { type = "text", required = true }
title = { type = "text", required = true }
note = "text"
[[variants]]
when = "a"
table = "t_a"
[variants.columns]
x = { type = "integer", required = true }
y = { type = "text", required = true, on_missing = { default = "none" } }
[[variants]]
when = "b"
table = "t_b"
[variants.columns]
z = "text"
"""


@pytest.fixture(scope="module")
def spec() -> Spec:
    return spec_from_toml(SPEC)


@pytest.mark.parametrize(
    ("table", "column", "expected"),
    [
        ("base", "title", '"title"'),  # required, quarantined when missing: never filled
        ("base", "note", '"note"'),  # optional
        ("a", "x", '"x"'),
        ("a", "y", "coalesce(\"y\", 'none'::text)"),  # on_missing default
    ],
)
def test_filled(spec: Spec, table: str, column: str, expected: str) -> None:
    """rules.filled fills exactly the columns the spec gives an on_missing default."""
    columns = spec.base.columns if table == "base" else next(v.columns for v in spec.variants if v.when == table)
    assert as_text(rules.filled(ident(column), columns[column])) == expected


def test_invalid(spec: Spec) -> None:
    """rules.invalid: NULL or unknown discriminator, a missing quarantining required value; never a filled one."""
    assert as_text(rules.invalid(spec, "l")) == (
        '(l."kind" IS NULL OR l."kind" NOT IN (\'a\', \'b\') OR l."title" IS NULL'
        ' OR (l."kind" = \'a\' AND l."x" IS NULL))'
    )


def test_rejections_in_postgres_order_and_words(spec: Spec) -> None:
    """rules.rejections: base NOT NULLs, the CHECK, then the variants' NOT NULLs, worded as PostgreSQL words them."""
    got = [(as_text(r.condition), r.sqlstate, r.message) for r in rules.rejections(spec, "l")]
    assert got == [
        ('l."kind" IS NULL', "23502", 'null value in column "kind" of relation "t_base" violates not-null constraint'),
        (
            'l."title" IS NULL',
            "23502",
            'null value in column "title" of relation "t_base" violates not-null constraint',
        ),
        (
            "l.\"kind\" NOT IN ('a', 'b')",
            "23514",
            'new row for relation "t_base" violates check constraint "t_base_kind_check"',
        ),
        (
            'l."kind" = \'a\' AND l."x" IS NULL',
            "23502",
            'null value in column "x" of relation "t_a" violates not-null constraint',
        ),
    ]


def test_rejection_reason(spec: Spec) -> None:
    """rules.rejection_reason is a CASE over the rejections, first match wins."""
    text = as_text(rules.rejection_reason(spec, "sqlstate", "l"))
    assert text.startswith("CASE WHEN l.\"kind\" IS NULL THEN '23502' WHEN")
    assert text.endswith("THEN '23502' END")


def test_backfill_and_validation_share_the_rejection_rule(spec: Spec) -> None:
    """The backfill's chunk and the validation's chunk hash both contain the one rules.invalid text."""
    rule = as_text(rules.invalid(spec, "l"))
    ctx = Context(spec)
    assert any(rule in a.text() for a in Backfill().plan(ctx))
    assert any(rule in a.text() for a in Validate().plan(ctx))


def test_views_and_triggers_share_the_default_rule(spec: Spec) -> None:
    """The normalized legacy view and the trigger's sync fill the on_missing default with the same expression."""
    y = spec.variants[0].columns["y"]
    # The views qualify with a quoted alias ("l"."y"); the rule is the same coalesce around it.
    assert as_text(rules.filled(ident("l", "y"), y)) in as_text(views.legacy_normalized(spec))
    assert as_text(rules.filled(rules.column("NEW", "y"), y)) in as_text(triggers.forward_sync_body(spec, row="NEW"))
