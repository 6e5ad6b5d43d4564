"""`migrator models`: print the split tables' ORM models (migrator.modelgen), Django or SQLAlchemy."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import click

from migrator import console
from migrator.cli.app import App, cli, done, examples, pass_app

F = TypeVar("F", bound=Callable[..., Any])


def _dedented(fn: F) -> F:
    # examples() appends an unindented section, after which click no longer strips the docstring's own indent.
    fn.__doc__ = inspect.cleandoc(fn.__doc__ or "")
    return fn


@cli.command()
@click.option("--django", "framework", flag_value="django", help="Django models (unmanaged, for models.py).")
@click.option("--sqlalchemy", "framework", flag_value="sqlalchemy", help="SQLAlchemy 2.0 typed declarative models.")
@click.option("--app", "app_label", help="Django app label for Meta.app_label (when the file is not in the app).")
@click.option(
    "--legacy-defaults",
    is_flag=True,
    help="Read the legacy columns' defaults from the database (--dsn) and give the models the same ones.",
)
@examples(
    "migrator models --django > myapp/split_models.py",
    "migrator models --django --app projects_v2 --legacy-defaults",
    "migrator --spec payments.toml models --sqlalchemy > payments/models.py",
)
@_dedented
@pass_app
def models(app: App, framework: str | None, app_label: str | None, legacy_defaults: bool) -> None:
    """Print the models of the split tables, from the spec: the base with type-specific queries, the one-to-one
    variant children, the key/value meta model. Needs no database unless --legacy-defaults."""
    from migrator import modelgen
    from migrator.errors import BadInputError

    if framework is None:
        raise BadInputError("say which models to print", hint="add --django or --sqlalchemy")
    if app_label is not None and (framework != "django" or not app_label.isidentifier()):
        raise BadInputError(
            f"--app {app_label!r} needs --django and a Python identifier", hint="e.g. --django --app projects_v2"
        )
    spec = app.spec
    defaults: dict[str, modelgen.Default] = {}
    if legacy_defaults:
        with app.db.connect(autocommit=True) as conn:
            defaults = modelgen.legacy_defaults(conn, spec)
    if framework == "django":
        code = modelgen.django_models(spec, app_label, defaults)
    else:
        code = modelgen.sqlalchemy_models(spec, defaults)
    classes = [modelgen.class_name(t) for t in spec.split_tables()]
    done(
        app,
        details={"framework": framework, "classes": classes, "defaults": sorted(defaults), "code": code},
        changed=False,
    )
    if not app.json:
        console.python_source(code)
