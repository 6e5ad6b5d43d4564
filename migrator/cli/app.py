"""The CLI's frame: global options, the App they build, the error handler with DESIGN.md's exit codes, and helpers
the command modules share. No SQL here, and no rich: rendering is console.py's."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import click
import psycopg
from sqlalchemy import exc as sa_exc

from migrator import console
from migrator.db import DEFAULT_LOCK_TIMEOUT, Database, dsn_password
from migrator.engine.context import Context, Reporter
from migrator.errors import BadInputError, MigratorError
from migrator.spec import Spec, load_spec

F = TypeVar("F", bound=Callable[..., Any])

_verbose = False
_secrets: list[str] = []


@dataclass
class App:
    """Global options and lazily built spec/database, shared by every command."""

    dsn: str | None
    spec_path: str | None
    json: bool
    yes: bool
    verbose: bool
    lock_timeout: float
    _spec: Spec | None = field(default=None, repr=False)
    _db: Database | None = field(default=None, repr=False)

    @property
    def spec(self) -> Spec:
        if self._spec is None:
            self._spec = load_spec(self.spec_path)
        return self._spec

    @property
    def db(self) -> Database:
        if self._db is None:
            dsn = self.dsn
            if not dsn:
                from migrator import embedded

                dsn = embedded.dsn()
                if not self.json:
                    console.info(f"no --dsn or DATABASE_URL: using the embedded PostgreSQL in {embedded.default_dir()}")
            self._db = Database(dsn)
            if self._db.password:
                _secrets.append(self._db.password)
        return self._db


pass_app = click.make_pass_decorator(App)


def defaulted(name: str, type_: Any, default: Any, help_: str) -> Callable[[F], F]:
    """An option with a default, shown in --help."""
    return click.option(name, type=type_, default=default, show_default=True, help=help_)


# Every command that moves the state records why, in the audit log.
reason_option = click.option("--reason", help="Why, for the audit log.")


def scrub(text: str) -> str:
    for secret in _secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _remember_secret(dsn: str | None) -> None:
    # Record the password before anything can fail, so even a DSN that does not parse is never echoed back.
    password = dsn_password(dsn) if dsn else None
    if password:
        _secrets.append(password)


def examples(*lines: str) -> Callable[[F], F]:
    """Append an Examples section to a command's --help."""

    def deco(fn: F) -> F:
        text = "\n\n\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
        fn.__doc__ = (fn.__doc__ or "") + text
        return fn

    return deco


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--dsn", envvar="DATABASE_URL", help="PostgreSQL DSN (default: $DATABASE_URL, else embedded).")
@click.option("--spec", "spec_path", envvar="MIGRATOR_SPEC", help="Spec TOML file (default: built-in projects).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--yes", "-y", is_flag=True, help="Answer yes to confirmations (scripts, CI).")
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks on errors.")
@defaulted("--lock-timeout", float, DEFAULT_LOCK_TIMEOUT, "Seconds a DDL step waits for its lock before it retries.")
@click.version_option(package_name="migrator")
@click.pass_context
def cli(
    ctx: click.Context,
    dsn: str | None,
    spec_path: str | None,
    as_json: bool,
    yes: bool,
    verbose: bool,
    lock_timeout: float,
) -> None:
    """Split a live wide PostgreSQL table into a normalized schema, phase by phase, without downtime.

    \b
    Phases:  expand -> backfill -> validate -> switch-reads -> switch-writes -> contract
    Any state can be rolled back with `migrator rollback`.
    """
    global _verbose  # noqa: PLW0603 — the error handler runs after click's context is gone
    _verbose = verbose
    _remember_secret(dsn)
    ctx.obj = App(dsn or None, spec_path, as_json, yes, verbose, lock_timeout)


def context(app: App, reporter: Reporter | None = None, reason: str | None = None) -> Context:
    """The phases' Context for this invocation: its spec, database, DDL lock timeout and reporter."""
    return Context(
        app.spec,
        app.db,
        lock_timeout=app.lock_timeout,
        reporter=reporter or (console.JsonReporter() if app.json else console.StepReporter()),
        reason=reason,
    )


def done(app: App, command: str, to_state: str, **extra: Any) -> None:
    if app.json:
        console.print_json({"event": "done", "command": command, "state": to_state, **extra})
    else:
        console.success(f"{command}: the migration is now in {to_state}")


def handle(exc: BaseException) -> int:
    """One line for a human (a traceback only with -v); the exit code DESIGN.md assigns."""
    if _verbose:
        console.traceback()
    if isinstance(exc, MigratorError):
        console.error(scrub(str(exc)))
        return exc.exit_code
    if isinstance(exc, sa_exc.DBAPIError | psycopg.Error):
        orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
        state = getattr(orig, "sqlstate", None)
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
        console.error(
            scrub(f"database error{f' {state}' if state else ''}: {first}")
            + ("" if _verbose else "  (run with -v for the traceback)")
        )
        return 3
    if isinstance(exc, OSError):
        console.error(scrub(f"{exc}"))
        return 3
    console.error(scrub(f"unexpected error: {type(exc).__name__}: {exc}") + "  (run with -v for the traceback)")
    return 3


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so every `finally` (locks, connections) runs on the way out."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def _interrupted(exc: BaseException) -> NoReturn:
    # Each step commits on its own, so what finished is kept; the state and the audit log say where it stopped.
    console.error(
        "interrupted: every completed step is committed; `migrator status` shows where the migration is — "
        "run the same command again to continue, or `migrator rollback`"
    )
    sys.exit(143 if isinstance(exc, Terminated) else 130)


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli.main(args=argv, prog_name="migrator", standalone_mode=False)
    except click.exceptions.Abort as exc:
        # click turns Ctrl-C (and SIGTERM, raised as one) into Abort; a declined confirmation is an Abort too.
        if isinstance(exc.__context__, KeyboardInterrupt):
            _interrupted(exc.__context__)
        console.error("aborted")
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(BadInputError.exit_code if exc.exit_code == 2 else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except Exception as exc:
        sys.exit(handle(exc))
    sys.exit(0)
