"""The `MIGRATOR` setting and the DSN built from Django's own `DATABASES`, so an application configures one
database, once.

    MIGRATOR = {
        "migration": "core_project_split",   # default: the spec's name
        "spec": "projects",                  # a built-in spec name or a TOML path (default: projects)
        "database": "default",               # the DATABASES alias the flags and the command use
        "max_age": 5.0,                      # seconds a flag value may be old (FlagReader max_age)
        "listen": True,                      # LISTEN for changes (False: reload on request when stale)
    }
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import psycopg
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from sqlalchemy.engine import URL

from migrator.errors import MigratorError
from migrator.spec import Spec, load_spec

_KEYS = frozenset({"migration", "spec", "database", "max_age", "listen"})


@dataclass(frozen=True)
class Config:
    spec: Spec
    spec_path: str | None
    migration: str
    database: str
    max_age: float
    listen: bool


def config() -> Config:
    """The validated MIGRATOR setting (ImproperlyConfigured naming the key when it is wrong)."""
    raw: Any = getattr(settings, "MIGRATOR", {})
    if not isinstance(raw, dict):
        raise ImproperlyConfigured("settings.MIGRATOR must be a dict, e.g. {'spec': 'projects'}")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ImproperlyConfigured(f"settings.MIGRATOR has unknown keys {sorted(unknown)}; use {sorted(_KEYS)}")
    spec_path = raw.get("spec")
    spec = _spec(None if spec_path is None else str(spec_path))
    database = str(raw.get("database", "default"))
    if database not in settings.DATABASES:
        raise ImproperlyConfigured(f"settings.MIGRATOR['database'] = {database!r} is not an alias in DATABASES")
    migration = str(raw.get("migration", spec.migration_name))
    if migration != spec.migration_name:
        raise ImproperlyConfigured(
            f"settings.MIGRATOR['migration'] = {migration!r} but the spec names {spec.migration_name!r}"
        )
    return Config(
        spec=spec,
        spec_path=None if spec_path is None else str(spec_path),
        migration=migration,
        database=database,
        max_age=float(raw.get("max_age", 5.0)),
        listen=bool(raw.get("listen", True)),
    )


@lru_cache(maxsize=8)
def _spec(path: str | None) -> Spec:
    try:
        return load_spec(path)
    except MigratorError as exc:
        raise ImproperlyConfigured(f"settings.MIGRATOR['spec']: {exc}") from None


@lru_cache(maxsize=1)
def _libpq_keywords() -> frozenset[str]:
    return frozenset(o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults())


def dsn(alias: str | None = None) -> str:
    """A postgresql:// URL for a DATABASES alias (default: MIGRATOR['database']); OPTIONS that libpq knows
    (sslmode, options, service, target_session_attrs…) are carried, Django-only ones (pool, isolation_level…)
    are not."""
    alias = alias or config().database
    try:
        db = settings.DATABASES[alias]
    except KeyError:
        raise ImproperlyConfigured(f"no database {alias!r} in DATABASES") from None
    engine = str(db.get("ENGINE", ""))
    if "postgresql" not in engine and "postgis" not in engine:
        raise ImproperlyConfigured(f"DATABASES[{alias!r}] is {engine or 'not configured'}, not PostgreSQL")
    host = str(db.get("HOST") or "")
    query: dict[str, str] = {}
    keywords = _libpq_keywords()
    for key, value in (db.get("OPTIONS") or {}).items():
        if key in keywords and value is not None:
            query[str(key)] = str(value)
    if host.startswith("/"):
        # A socket directory goes in the query: as a URL's host it would read as part of the path.
        query["host"] = host
        host = ""
    url = URL.create(
        "postgresql",
        username=str(db.get("USER") or "") or None,
        password=str(db.get("PASSWORD") or "") or None,
        host=host or None,
        port=int(db["PORT"]) if db.get("PORT") else None,
        database=str(db.get("NAME") or "") or None,
        query=query,
    )
    return url.render_as_string(hide_password=False)
