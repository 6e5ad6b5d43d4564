"""System checks (`manage.py check`; those that read the database need `--database ALIAS`, as Django's own):

- migrator.E001  the MIGRATOR setting or its spec is wrong.
- migrator.W001  a model still uses the legacy table, but contract archived it without a compatibility view.
- migrator.W002  reads (or writes) go to the split tables, but no installed model maps them.
- migrator.W003  a model of a split table has a field whose column the table does not have.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from django.apps import apps as django_apps
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from migrator import lifecycle, state
from migrator.contrib.django import conf
from migrator.spec import Spec
from migrator.sqlgen import names
from migrator.sqlgen.compose import as_text, ident


def _models(app_configs: Sequence[Any] | None) -> Iterable[Any]:
    if app_configs is None:
        return list(django_apps.get_models())
    return [m for app in app_configs for m in app.get_models()]


def _table_of(model: Any) -> tuple[str, str]:
    """(schema, table) of a model's db_table ('schema"."table' is Django's way to name another schema)."""
    db_table = str(model._meta.db_table)
    if '"."' in db_table:
        schema, table = db_table.split('"."', 1)
        return schema.strip('"'), table.strip('"')
    return "public", db_table


def check_settings(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """migrator.E001: MIGRATOR names a spec that loads and a PostgreSQL database."""
    try:
        cfg = conf.config()
        conf.dsn(cfg.database)
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), hint="see migrator.contrib.django.conf", id="migrator.E001")]
    return []


def check_state(
    app_configs: Sequence[Any] | None = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """W001-W003: the migration's state against the installed models (reads the database)."""
    try:
        cfg = conf.config()
    except ImproperlyConfigured:
        return []  # E001 says it
    if not databases or cfg.database not in databases:
        return []
    spec = cfg.spec
    models = list(_models(app_configs))
    source = (spec.source.schema_, spec.source.table)
    split = {(spec.target_schema, t) for t in spec.split_tables()}
    legacy_models = [m for m in models if _table_of(m) == source]
    split_models = [m for m in models if _table_of(m) in split]
    with psycopg.connect(conf.dsn(cfg.database), autocommit=True, connect_timeout=5) as conn:
        current = state.read(conn, spec).state
        relkind = _relkind(conn, as_text(names.source(spec)))
        messages = _state_messages(spec, current, relkind, legacy_models, split_models)
        if lifecycle.index(current) > 0:
            messages += _column_messages(conn, split_models)
    return messages


def _relkind(conn: psycopg.Connection[Any], qualified: str) -> str | None:
    row = conn.execute(
        "SELECT c.relkind::text FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass(%s)", [qualified]
    ).fetchone()
    return None if row is None else str(row[0])


def _label(model: Any) -> str:
    return f"{model._meta.app_label}.{model.__name__}"


def _state_messages(
    spec: Spec, current: str, relkind: str | None, legacy_models: list[Any], split_models: list[Any]
) -> list[checks.CheckMessage]:
    out: list[checks.CheckMessage] = []
    legacy = f"{spec.source.schema_}.{spec.source.table}"
    if lifecycle.stage(current).archived and relkind is None:
        for model in legacy_models:
            out.append(
                checks.Warning(
                    f"{_label(model)} uses {legacy}, but the migration is {current} and contract archived that "
                    f"table as {names.archive_name(spec)} without a compatibility view: every query of it fails",
                    hint="read and write through the split models (`migrator models --django`), or roll back and "
                    "re-run `migrator contract --compat-view`",
                    obj=model,
                    id="migrator.W001",
                )
            )
    if (lifecycle.reads_split(current) or lifecycle.writes_split(current)) and not split_models:
        out.append(
            checks.Warning(
                f"the migration is {current}: the application should use the split tables "
                f"({', '.join(spec.split_tables())}), but no installed model maps them",
                hint="generate them with `python manage.py migrator models --django --app <label>`",
                id="migrator.W002",
            )
        )
    return out


def _column_messages(conn: psycopg.Connection[Any], split_models: list[Any]) -> list[checks.CheckMessage]:
    out: list[checks.CheckMessage] = []
    for model in split_models:
        schema, table = _table_of(model)
        columns = {
            str(r[0])
            for r in conn.execute(
                "SELECT a.attname::text FROM pg_catalog.pg_attribute a WHERE a.attrelid = to_regclass(%s)"
                " AND a.attnum > 0 AND NOT a.attisdropped",
                [as_text(ident(schema, table))],
            )
        }
        if not columns:
            continue  # the table itself is missing: W001/W002 or the state say why
        for field in model._meta.concrete_fields:
            if field.column not in columns:
                out.append(
                    checks.Warning(
                        f"{_label(model)}.{field.name} reads column {field.column!r}, which {schema}.{table} "
                        "does not have",
                        hint="regenerate the models from the spec the migration runs with (`migrator models`)",
                        obj=model,
                        id="migrator.W003",
                    )
                )
    return out
