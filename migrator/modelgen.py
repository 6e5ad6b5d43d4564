"""ORM models of the split tables, generated from the spec: Django ("After" models, unmanaged) and SQLAlchemy 2.0
(typed declarative). The spec alone is enough; the legacy table's column defaults, when a caller read them from the
database (`legacy_defaults`), become Python-side defaults, since the split tables carry none but the key's.

The key of the base table has no default in the models: expand gives the column `DEFAULT nextval(<legacy
sequence>)`, so an application that creates rows passes no id and both sides draw from the one sequence.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from typing import Any

import psycopg

from migrator.spec import ColumnSpec, Spec
from migrator.sqlgen import names
from migrator.sqlgen.compose import as_text, load
from migrator.sqlgen.ddl import offline_sequence

__all__ = ["Default", "class_name", "django_models", "legacy_defaults", "sqlalchemy_models"]

AUTH_USER_TABLE = "auth_user"  # Django's own user table: its model is settings.AUTH_USER_MODEL


@dataclass(frozen=True)
class Default:
    """A legacy column default the models can reproduce: a Python literal, or "now" (the current time)."""

    python: str | None = None
    now: bool = False


@dataclass(frozen=True)
class _Type:
    django: str  # a field constructor without its keyword arguments' parentheses closed: "models.CharField("
    django_args: tuple[str, ...]
    sa: str  # a SQLAlchemy type expression
    py: str  # the Mapped[...] Python type


_TYPMOD = re.compile(r"^(?P<name>[^(\[]+)\s*(?:\((?P<mod>[^)]*)\))?(?P<rest>.*)$")


def _split_type(pg_type: str) -> tuple[str, list[int], str]:
    m = _TYPMOD.match(" ".join(pg_type.lower().split()))
    assert m is not None  # the pattern matches any string
    mods = [int(x) for x in (m.group("mod") or "").split(",") if x.strip().isdigit()]
    return m.group("name").strip(), mods, m.group("rest").strip()


def field_types(pg_type: str) -> _Type:  # noqa: PLR0911, PLR0912 — one flat lookup reads best
    """How a spec column type maps to Django and SQLAlchemy; an unknown type (an enum, a domain) reads as text."""
    if pg_type.endswith("]"):
        inner = field_types(pg_type[: pg_type.rindex("[")])
        base_field = f"{inner.django}{', '.join(inner.django_args)})"
        return _Type("ArrayField(", (base_field,), f"ARRAY({inner.sa})", f"list[{inner.py}]")
    name, mods, rest = _split_type(pg_type)
    if name in ("varchar", "character varying", "char", "character", "bpchar"):
        if mods:
            sa = "String" if "var" in name else "CHAR"
            return _Type("models.CharField(", (f"max_length={mods[0]}",), f"{sa}({mods[0]})", "str")
        return _Type("models.TextField(", (), "Text", "str")
    if name in ("text", "citext", "name"):
        return _Type("models.TextField(", (), "Text", "str")
    if name in ("bigint", "int8"):
        return _Type("models.BigIntegerField(", (), "BigInteger", "int")
    if name in ("integer", "int", "int4"):
        return _Type("models.IntegerField(", (), "Integer", "int")
    if name in ("smallint", "int2"):
        return _Type("models.SmallIntegerField(", (), "SmallInteger", "int")
    if name in ("boolean", "bool"):
        return _Type("models.BooleanField(", (), "Boolean", "bool")
    if name == "date":
        return _Type("models.DateField(", (), "Date", "datetime.date")
    if name.startswith(("timestamptz", "timestamp")):
        aware = name == "timestamptz" or "with time zone" in f"{name} {rest}"
        return _Type("models.DateTimeField(", (), f"DateTime(timezone={aware})", "datetime.datetime")
    if name.startswith(("time ", "timetz")) or name == "time":
        return _Type("models.TimeField(", (), "Time", "datetime.time")
    if name.startswith("interval"):
        return _Type("models.DurationField(", (), "Interval", "datetime.timedelta")
    if name in ("numeric", "decimal"):
        precision, scale = [*mods, 0, 0][:2] if mods else (None, None)
        if precision is None:
            # An unconstrained numeric has no precision for DecimalField to check against.
            return _Type(
                "models.DecimalField(", ("max_digits=1000", "decimal_places=500"), "Numeric", "decimal.Decimal"
            )
        return _Type(
            "models.DecimalField(",
            (f"max_digits={precision}", f"decimal_places={scale}"),
            f"Numeric({precision}, {scale})",
            "decimal.Decimal",
        )
    if name in ("real", "float4"):
        return _Type("models.FloatField(", (), "REAL", "float")
    if name in ("double precision", "float8", "float"):
        return _Type("models.FloatField(", (), "Double", "float")
    if name == "uuid":
        return _Type("models.UUIDField(", (), "Uuid", "uuid.UUID")
    if name == "jsonb":
        return _Type("models.JSONField(", (), "JSONB", "Any")
    if name == "json":
        return _Type("models.JSONField(", (), "JSON", "Any")
    if name == "bytea":
        return _Type("models.BinaryField(", (), "LargeBinary", "bytes")
    return _Type("models.TextField(", (), "Text", "str")


def class_name(table: str) -> str:
    """projects -> Project, school_projects -> SchoolProject, project_meta -> ProjectMeta."""
    words = [w for w in re.split(r"[^0-9A-Za-z]+", table) if w]
    if words:
        last = words[-1]
        if last.endswith("ies") and len(last) > 3:
            words[-1] = last[:-3] + "y"
        elif last.endswith(("sses", "xes", "ches", "shes")):
            words[-1] = last[:-2]
        elif last.endswith("s") and not last.endswith(("ss", "us", "is")):
            words[-1] = last[:-1]
    name = "".join(w[:1].upper() + w[1:] for w in words) or "Model"
    return f"M{name}" if name[0].isdigit() else name


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _attr(column: str) -> str:
    """A Python attribute name for a column (the column keeps its own name through db_column)."""
    attr = re.sub(r"\W", "_", column)
    if not attr or attr[0].isdigit() or keyword.iskeyword(attr):
        attr = f"f_{attr}"
    return attr


def legacy_defaults(conn: psycopg.Connection[Any], spec: Spec) -> dict[str, Default]:
    """The legacy columns' defaults that a model can reproduce (constants and the current time), by column."""
    rows = conn.execute(
        load("view_defaults"), {"table": as_text(names.source(spec)), "columns": spec.legacy_columns()}
    ).fetchall()
    out: dict[str, Default] = {}
    for column, expr in rows:
        d = _python_default(str(expr))
        if d is not None and column != spec.pk:
            out[str(column)] = d
    return out


_NOW = {"now()", "current_timestamp", "statement_timestamp()", "transaction_timestamp()", "clock_timestamp()"}


def _python_default(expr: str) -> Default | None:
    e = expr.strip()
    low = e.lower()
    if low in _NOW or low.startswith("current_timestamp"):
        return Default(now=True)
    if low in ("true", "false"):
        return Default(python=low.capitalize())
    if re.fullmatch(r"-?\d+(\.\d+)?", e) or re.fullmatch(r"\(-?\d+(\.\d+)?\)", e):
        return Default(python=e.strip("()"))
    m = re.fullmatch(r"'((?:[^']|'')*)'(?:::[\w\s]+)?", e)
    if m and not low.endswith(("::jsonb", "::json")):
        return Default(python=repr(m.group(1).replace("''", "'")))
    return None


# -- Django ---------------------------------------------------------------------------------------------------


_ON_DELETE = {"cascade": "CASCADE", "restrict": "RESTRICT", "set null": "SET_NULL", "no action": "DO_NOTHING"}


def _django_pk(spec: Spec) -> str:
    pk_type = spec.source.primary_key_type.lower()
    seq = offline_sequence(spec)
    why = (
        f"  # DEFAULT nextval('{spec.source.schema_}.{seq}'), the legacy key's sequence: create() passes no id"
        if seq
        else ""
    )
    if pk_type in ("bigint", "int8"):
        return f"models.BigAutoField(primary_key=True, db_column={spec.pk!r}){why}"
    if pk_type in ("integer", "int", "int4"):
        return f"models.AutoField(primary_key=True, db_column={spec.pk!r}){why}"
    if pk_type in ("smallint", "int2"):
        return f"models.SmallAutoField(primary_key=True, db_column={spec.pk!r}){why}"
    if pk_type == "uuid":
        return f"models.UUIDField(primary_key=True, default=uuid.uuid4, db_column={spec.pk!r})"
    t = field_types(spec.source.primary_key_type)
    return f"{t.django}{', '.join([*t.django_args, 'primary_key=True', f'db_column={spec.pk!r}'])})"


def _django_field(col: str, cs: ColumnSpec, default: Default | None, extra: tuple[str, ...] = ()) -> str:
    t = field_types(cs.type)
    args = [*t.django_args, *extra]
    if not cs.required:
        args += ["null=True", "blank=True"]
    if default is not None:
        args.append("default=timezone.now" if default.now else f"default={default.python}")
    if _attr(col) != col:
        args.append(f"db_column={col!r}")
    return f"{t.django}{', '.join(args)})"


def _db_table(schema: str, table: str) -> str:
    # Django quotes db_table as one identifier; the inner quotes make it "schema"."table".
    return repr(table) if schema == "public" else repr(f'{schema}"."{table}')


def _django_header(spec: Spec, defaults: dict[str, Default]) -> list[str]:
    uses = " ".join(c.type for _, _, _, c in spec.iter_columns())
    lines = [
        f'"""Django models of the split tables of migration {spec.migration_name}, generated by',
        f"`migrator models --django` from the spec (source {spec.source.schema_}.{spec.source.table}).",
        "",
        "managed = False: migrator creates, backfills and contracts these tables; Django never migrates them.",
        '"""',
        "",
    ]
    if "uuid" in spec.source.primary_key_type.lower():
        lines += ["import uuid", ""]
    if any(fk.references == AUTH_USER_TABLE for fk in spec.base.foreign_keys):
        lines.append("from django.conf import settings")
    if "[" in uses:
        lines.append("from django.contrib.postgres.fields import ArrayField")
    lines.append("from django.db import models")
    if any(d.now for d in defaults.values()):
        lines.append("from django.utils import timezone")
    return [*lines, "", ""]


def _django_queryset(spec: Spec, qs: str) -> list[str]:
    disc = spec.source.discriminator
    lines = [f"class {qs}(models.QuerySet):", '    """Type-specific queries (the seed\'s manager methods)."""', ""]
    for v in spec.variants:
        related = class_name(v.table).lower()
        lines += [
            f"    def {_attr(v.table)}(self):",
            f"        return self.filter({_attr(disc)}={v.when!r}).select_related({related!r})",
            "",
        ]
    if "is_draft" in spec.base.columns and "created_at" in spec.base.columns:
        lines += [
            "    def abandoned_drafts(self, hours=24):",
            "        from datetime import timedelta",
            "",
            "        from django.utils import timezone as tz",
            "",
            "        return self.filter(is_draft=True, created_at__lt=tz.now() - timedelta(hours=hours))",
            "",
        ]
    return [*lines, ""]


def _django_meta_class(schema: str, table: str, app_label: str | None, extra: tuple[str, ...] = ()) -> list[str]:
    lines = ["", "    class Meta:", "        managed = False", f"        db_table = {_db_table(schema, table)}", *extra]
    if app_label:
        lines.append(f"        app_label = {app_label!r}")
    return [*lines, "", ""]


def _django_base(spec: Spec, app_label: str | None, defaults: dict[str, Default], const: str, qs: str) -> list[str]:
    base = spec.base
    lines = [f"class {class_name(base.table)}(models.Model):", f"    {_attr(spec.pk)} = {_django_pk(spec)}"]
    fks = {fk.column: fk for fk in base.foreign_keys}
    for col, cs in base.columns.items():
        fk = fks.get(col)
        if fk is not None and fk.references == AUTH_USER_TABLE and fk.references_column == "id":
            attr = _attr(col.removesuffix("_id")) if col.endswith("_id") else _attr(col)
            args = [
                "settings.AUTH_USER_MODEL",
                f"on_delete=models.{_ON_DELETE[fk.on_delete]}",
                f"db_column={col!r}",
                # Not Django's default <model>_set: the app's legacy model already takes that name on the user.
                f"related_name={base.table!r}",
            ]
            if not cs.required:
                args += ["null=True", "blank=True"]
            lines.append(f"    {attr} = models.ForeignKey({', '.join(args)})")
            continue
        extra = (f"choices={const}",) if col == spec.source.discriminator else ()
        field = _django_field(col, cs, defaults.get(col), extra)
        note = f"  # references {fk.references_schema}.{fk.references}({fk.references_column})" if fk else ""
        lines.append(f"    {_attr(col)} = {field}{note}")
    lines += ["", f"    objects = {qs}.as_manager()"]
    return lines + _django_meta_class(base.schema_, base.table, app_label)


def _django_variants(spec: Spec, app_label: str | None, defaults: dict[str, Default]) -> list[str]:
    base = spec.base
    base_cls = class_name(base.table)
    lines: list[str] = []
    for v in spec.variants:
        cls = class_name(v.table)
        lines += [
            f"class {cls}(models.Model):",
            f'    """The columns of {base_cls} rows whose {spec.source.discriminator} is {v.when!r}."""',
            "",
            f"    {_snake(base_cls)} = models.OneToOneField(",
            f"        {base_cls}, on_delete=models.CASCADE, primary_key=True, db_column={base.link_column!r},",
            f"        related_name={cls.lower()!r},",
            "    )",
        ]
        lines += [f"    {_attr(col)} = {_django_field(col, cs, defaults.get(col))}" for col, cs in v.columns.items()]
        lines += _django_meta_class(base.schema_, v.table, app_label)
    return lines


def _django_meta_model(spec: Spec, app_label: str | None) -> list[str]:
    if not spec.meta:
        return []
    m, base = spec.meta, spec.base
    base_cls = class_name(base.table)
    link_attr = _snake(base_cls)
    unique = names.object_name(m.table, base.link_column, m.key_column, suffix="key")
    keys = ", ".join(repr(k) for k in m.columns)
    lines = [
        f"class {class_name(m.table)}(models.Model):",
        f'    """Key/value rows of a {base_cls}: one per non-NULL legacy column among KEYS."""',
        "",
        f"    KEYS = ({keys}{',' if len(m.columns) == 1 else ''})",
        "",
        f"    {_attr(m.id_column)} = models.BigAutoField(primary_key=True, db_column={m.id_column!r})",
        f"    {link_attr} = models.ForeignKey(",
        f"        {base_cls}, on_delete=models.CASCADE, db_column={base.link_column!r}, related_name='metadata'",
        "    )",
        f"    {_attr(m.key_column)} = models.TextField(db_column={m.key_column!r})",
        f"    {_attr(m.value_column)} = models.JSONField(db_column={m.value_column!r})",
    ]
    constraint = (
        "        constraints = [",
        f"            models.UniqueConstraint(fields=[{link_attr!r}, {_attr(m.key_column)!r}], name={unique!r}),",
        "        ]",
    )
    return lines + _django_meta_class(base.schema_, m.table, app_label, constraint)


def django_models(spec: Spec, app_label: str | None = None, defaults: dict[str, Default] | None = None) -> str:
    """A models.py for the split tables: unmanaged (migrator owns the DDL), with the seed's type-specific
    queryset methods, one-to-one children and the key/value meta model."""
    defaults = defaults or {}
    base_cls = class_name(spec.base.table)
    choices = ", ".join(f"({v.when!r}, {v.when!r})" for v in spec.variants)
    const = f"{_attr(spec.source.discriminator).upper()}_CHOICES"
    qs = f"{base_cls}QuerySet"
    lines = [
        *_django_header(spec, defaults),
        f"{const} = [{choices}]",
        "",
        "",
        *_django_queryset(spec, qs),
        "",
        *_django_base(spec, app_label, defaults, const, qs),
        *_django_variants(spec, app_label, defaults),
        *_django_meta_model(spec, app_label),
    ]
    return "\n".join(lines).rstrip() + "\n"


# -- SQLAlchemy -----------------------------------------------------------------------------------------------


def _sa_column(col: str, cs: ColumnSpec, default: Default | None, fk: str | None = None) -> tuple[str, str]:
    t = field_types(cs.type)
    py = t.py if cs.required else f"{t.py} | None"
    args = [repr(col), t.sa]
    if fk:
        args.append(fk)
    if default is not None:
        args.append("default=func.now()" if default.now else f"default={default.python}")
    return py, f"mapped_column({', '.join(args)})"


def sqlalchemy_models(spec: Spec, defaults: dict[str, Default] | None = None) -> str:
    """SQLAlchemy 2.0 typed declarative models of the split tables, with relationships both ways."""
    defaults = defaults or {}
    base = spec.base
    base_cls = class_name(base.table)
    link_attr = _snake(base_cls)
    # The children's attribute for their parent; it must not shadow the link column's own attribute.
    rel_attr = link_attr if link_attr != _attr(base.link_column) else f"{link_attr}_"
    schema = base.schema_
    pk_t = field_types(spec.source.primary_key_type)
    seq = offline_sequence(spec)
    lines = [
        "class Base(DeclarativeBase):",
        "    pass",
        "",
        "",
        f"class {base_cls}(Base):",
        f"    __tablename__ = {base.table!r}",
        f"    __table_args__ = {{'schema': {schema!r}}}",
        "",
    ]
    if seq:
        lines.append(f"    # DEFAULT nextval('{spec.source.schema_}.{seq}') (set by expand): inserts pass no id.")
        pk_default = ", server_default=FetchedValue()"
    elif spec.source.primary_key_type.lower() == "uuid":
        pk_default = ", default=uuid.uuid4"
    else:
        pk_default = ""
    lines.append(
        f"    {_attr(spec.pk)}: Mapped[{pk_t.py}] = mapped_column({spec.pk!r}, {pk_t.sa}, primary_key=True{pk_default})"
    )
    fks = {fk.column: fk for fk in base.foreign_keys}
    for col, cs in base.columns.items():
        fk = fks.get(col)
        py, expr = _sa_column(col, cs, defaults.get(col))
        note = f"  # references {fk.references_schema}.{fk.references}({fk.references_column})" if fk else ""
        lines.append(f"    {_attr(col)}: Mapped[{py}] = {expr}{note}")
    lines.append("")
    for v in spec.variants:
        cls = class_name(v.table)
        lines.append(
            f"    {cls.lower()}: Mapped[{cls} | None] = relationship(back_populates={rel_attr!r}, passive_deletes=True)"
        )
    if spec.meta:
        cls = class_name(spec.meta.table)
        # `metadata` is reserved on declarative classes (the MetaData); the Django side calls it metadata.
        lines.append(f"    meta: Mapped[list[{cls}]] = relationship(back_populates={rel_attr!r}, passive_deletes=True)")
    lines += ["", ""]
    target = f"{schema}.{base.table}.{spec.pk}"
    link_fk = f"ForeignKey({target!r}, ondelete='CASCADE')"
    for v in spec.variants:
        cls = class_name(v.table)
        lines += [
            f"class {cls}(Base):",
            f"    __tablename__ = {v.table!r}",
            f"    __table_args__ = {{'schema': {schema!r}}}",
            "",
            f"    {_attr(base.link_column)}: Mapped[{pk_t.py}] = mapped_column(",
            f"        {base.link_column!r}, {pk_t.sa}, {link_fk}, primary_key=True",
            "    )",
        ]
        for col, cs in v.columns.items():
            py, expr = _sa_column(col, cs, defaults.get(col))
            lines.append(f"    {_attr(col)}: Mapped[{py}] = {expr}")
        lines += [f"    {rel_attr}: Mapped[{base_cls}] = relationship(back_populates={cls.lower()!r})", "", ""]
    if spec.meta:
        m = spec.meta
        cls = class_name(m.table)
        unique = names.object_name(m.table, base.link_column, m.key_column, suffix="key")
        lines += [
            f"class {cls}(Base):",
            f"    __tablename__ = {m.table!r}",
            "    __table_args__ = (",
            f"        UniqueConstraint({base.link_column!r}, {m.key_column!r}, name={unique!r}),",
            f"        {{'schema': {schema!r}}},",
            "    )",
            "",
            f"    {_attr(m.id_column)}: Mapped[int] = mapped_column({m.id_column!r}, BigInteger, primary_key=True)",
            f"    {_attr(base.link_column)}: Mapped[{pk_t.py}] = mapped_column(",
            f"        {base.link_column!r}, {pk_t.sa}, {link_fk}",
            "    )",
            f"    {_attr(m.key_column)}: Mapped[str] = mapped_column({m.key_column!r}, Text)",
            f"    {_attr(m.value_column)}: Mapped[Any] = mapped_column({m.value_column!r}, JSONB)",
            f"    {rel_attr}: Mapped[{base_cls}] = relationship(back_populates='meta')",
            "",
            "",
        ]
    header = [
        f'"""SQLAlchemy models of the split tables of migration {spec.migration_name}, generated by',
        f"`migrator models --sqlalchemy` from the spec (source {spec.source.schema_}.{spec.source.table}).",
        "",
        "migrator owns the DDL: do not create_all() these tables.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        *_sa_imports("\n".join(lines)),
        "",
        "",
    ]
    return "\n".join(header + lines).rstrip() + "\n"


_SA_NAMES = (
    *("ARRAY", "CHAR", "JSON", "REAL", "BigInteger", "Boolean", "Date", "DateTime", "Double", "FetchedValue"),
    *("ForeignKey", "Integer", "Interval", "LargeBinary", "Numeric", "SmallInteger", "String", "Text", "Time"),
    *("UniqueConstraint", "Uuid", "func"),
)


def _sa_imports(body: str) -> list[str]:
    """Only the imports the generated body uses, so the module passes a linter as it stands."""
    used = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", body))
    out = [f"import {m}" for m in ("datetime", "decimal", "uuid") if f"{m}." in body]
    if "Any" in used:
        out.append("from typing import Any")
    if out:
        out.append("")
    out.append(f"from sqlalchemy import {', '.join(n for n in _SA_NAMES if n in used)}")
    if "JSONB" in used:
        out.append("from sqlalchemy.dialects.postgresql import JSONB")
    out.append("from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship")
    return out
