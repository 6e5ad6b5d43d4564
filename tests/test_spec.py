"""Spec loading and validation: every error names the file, the key path and the fix."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from migrator.errors import SpecError
from migrator.spec import load_spec, parse_spec

pytestmark = pytest.mark.unit

BUILTIN = Path(__file__).resolve().parent.parent / "migrator" / "specs" / "projects.toml"


def _builtin() -> dict[str, Any]:
    return tomllib.loads(BUILTIN.read_text())


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data, "my.toml")
    return str(info.value)


def test_builtin_spec_is_the_default() -> None:
    """With no path, the built-in projects spec loads and describes the seed's split."""
    spec = load_spec()
    assert spec.source.table == "core_project"
    assert spec.split_tables() == ["projects", "school_projects", "self_study_projects", "project_meta"]
    assert spec.legacy_columns()[0] == "id"
    assert "syllabus" in spec.legacy_columns()


def test_payments_spec_loads(payments_spec: Any) -> None:
    """The second test spec (uuid key, other schemas) validates."""
    assert payments_spec.source.primary_key_type == "uuid"
    assert payments_spec.meta.value_column == "data"
    card = payments_spec.variants[0].columns["card_brand"]
    assert card.on_missing.default == "unknown"


def test_unknown_key_is_named() -> None:
    """An unknown key is reported with its path and a fix."""
    data = _builtin()
    data["base"]["colums"] = {}
    msg = _error(data)
    assert "my.toml: base.colums: unknown key 'colums'" in msg
    assert "fix:" in msg


def test_variant_without_table() -> None:
    """A variant without `table` is reported at variants[i].table."""
    data = _builtin()
    del data["variants"][1]["table"]
    assert "my.toml: variants[1].table: required key is missing" in _error(data)


def test_column_in_two_places() -> None:
    """A legacy column listed in two split tables is refused."""
    data = _builtin()
    data["variants"][1]["columns"]["course_name"] = "text"
    msg = _error(data)
    assert "variants[1].columns.course_name" in msg
    assert "already listed at variants[0].columns.course_name" in msg


def test_discriminator_value_used_twice() -> None:
    """Two variants with the same `when` are refused."""
    data = _builtin()
    data["variants"][1]["when"] = "school"
    assert "variants[1].when: discriminator value 'school' is used by variants[0] too" in _error(data)


def test_identifier_too_long() -> None:
    """An identifier over 63 bytes (which PostgreSQL would silently truncate) is refused."""
    data = _builtin()
    data["base"]["table"] = "p" * 64
    assert "base.table: identifier" in _error(data)


def test_bad_type_cannot_inject() -> None:
    """A column type that is not a plain type name is refused (types go into DDL unquoted)."""
    data = _builtin()
    data["base"]["columns"]["start_date"] = "date; DROP TABLE core_project"
    assert "base.columns.start_date.type" in _error(data)


@pytest.mark.parametrize(
    "bad",
    [
        "text default current_user",
        "bigint references auth_user (id)",
        "text primary key",
        "bigint generated always as identity",
        'text collate "C"',
    ],
)
def test_type_with_constraint_words_is_refused(bad: str) -> None:
    """A type that smuggles in a default, a reference, a key, an identity or a collation is refused by key."""
    data = _builtin()
    data["base"]["columns"]["start_date"] = bad
    assert "base.columns.start_date.type" in _error(data)


@pytest.mark.parametrize(
    "good", ["shop.order_kind", '"Order Kind"[]', "timestamp(3) with time zone", "double precision"]
)
def test_qualified_quoted_and_multi_word_types_are_accepted(good: str) -> None:
    """Schema-qualified, quoted and PostgreSQL's multi-word type names pass the spec's grammar."""
    data = _builtin()
    data["base"]["columns"]["start_date"] = good
    assert parse_spec(data, "<test>").base.columns["start_date"].type == good


def test_discriminator_must_be_a_base_column() -> None:
    """The discriminator must be one of the base table's columns."""
    data = _builtin()
    del data["base"]["columns"]["project_type"]
    assert "source.discriminator" in _error(data)


def test_index_on_unknown_column() -> None:
    """An index naming a column its table does not have is refused."""
    data = _builtin()
    data["indexes"][0]["columns"] = ["nope"]
    assert "indexes[0]: projects has no column 'nope'" in _error(data)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    """A missing file and broken TOML are clear SpecErrors naming the file."""
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[source\n")
    with pytest.raises(SpecError, match=r"bad\.toml: not valid TOML"):
        load_spec(bad)


def test_hostile_identifiers_are_accepted() -> None:
    """Quotes, spaces and semicolons are legal in quoted identifiers and must not be refused."""
    data = _builtin()
    data["base"]["table"] = 'pro"jects; DROP TABLE x'
    data["indexes"] = [ix for ix in data["indexes"] if ix["table"] != "projects"]
    spec = parse_spec(data, "my.toml")
    assert spec.base.table == 'pro"jects; DROP TABLE x'
