"""The CLI's frame: global options, the App they build, the result every command reports (migrator.results: with
--json, exactly one JSON object at the end of stdout, errors included), the error handler with DESIGN.md's exit
codes, and helpers the command modules share. No SQL here, and no rich: rendering is console.py's.

A command reads the migration's state when it starts (`begin`) and reports what it did (`done`); `main` prints the
result once the command has returned or raised, so a command never prints it twice and a failure still ends with it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import click
import psycopg
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc

from migrator import console, lifecycle, results
from migrator.db import DEFAULT_LOCK_TIMEOUT, Database, dsn_password, mask_dsn
from migrator.engine.context import Context, Observed, Observers, Reporter
from migrator.errors import BadInputError, MigratorError, SpecError
from migrator.spec import Spec, load_spec
from migrator.state import State

F = TypeVar("F", bound=Callable[..., Any])

_verbose = False
_secrets: list[str] = []
# A DDL statement never waits longer than this for its lock (PostgreSQL's own limit is about 24 days).
MAX_LOCK_TIMEOUT = 3600.0
# The commands that move the migration (or try to): they fire the phase-* and state-changed events.
PHASE_COMMANDS = frozenset({*(s.enter for s in lifecycle.STAGES if s.enter), "rollback"})


@dataclass
class Outcome:
    """What this invocation reports at the end, filled in as the command runs (one per `main` call)."""

    command: str = "migrator"
    json: bool = False
    before: State | None = None
    after: State | None = None
    # Set by commands with no migration state of their own to report (demo reports its database's).
    state: str | None = None
    from_state: str | None = None
    changed: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # Top-level keys beyond the contract (runbook's, kept for 0.1 scripts).
    extra: dict[str, Any] = field(default_factory=dict)
    # Reads the state again after a failure (set by begin()).
    reread: Callable[[], State] | None = None
    # Who watches this invocation (event hooks, a long job's metrics), and what to call once it is over.
    observer: Observers = field(default_factory=Observers)
    closers: list[Callable[[], None]] = field(default_factory=list)


_outcome = Outcome()


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
                console.info(f"no --dsn or DATABASE_URL: using the embedded PostgreSQL in {embedded.default_dir()}")
            self._db = Database(dsn)
            if self._db.password:
                _secrets.append(self._db.password)
        return self._db

    @property
    def outcome(self) -> Outcome:
        return _outcome

    @property
    def observer(self) -> Observers:
        return _outcome.observer


pass_app = click.make_pass_decorator(App)


class FiniteFloat(click.FloatRange):
    """A FloatRange that refuses nan and ±inf (they pass a range check: every comparison with nan is false)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


class ByteSize(click.types.IntParamType):
    """A size in bytes, written as PostgreSQL writes sizes: 1073741824, 512MB, 1GB or 1GiB (kB, MB, GB and TB
    are powers of 1024 there, as in postgresql.conf)."""

    name = "size"
    _UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(value), re.IGNORECASE)
        if match is None:
            self.fail(f"{value!r} is not a size (e.g. 1073741824, 512MB, 1GiB).", param, ctx)
        size = int(float(match.group(1)) * self._UNITS[match.group(2).lower()])
        if size < 1:
            self.fail(f"{value!r} is not a positive size.", param, ctx)
        return size


def finite(
    min: float | None = None,
    max: float | None = None,
    *,
    min_open: bool = False,
) -> FiniteFloat:
    return FiniteFloat(min, max, min_open=min_open)


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


def check_dsn(dsn: str) -> None:
    """Refuse a DSN that cannot work, before any connection: exit 2 naming what is wrong."""
    from psycopg.conninfo import conninfo_to_dict

    ports: list[str] = []
    if "://" not in dsn.strip():
        with contextlib.suppress(psycopg.ProgrammingError):  # Database() below names the parse error
            ports.append(str(conninfo_to_dict(dsn).get("port") or ""))
    _check_ports(ports)
    try:
        db = Database(dsn)
    except ValueError as exc:
        raise BadInputError(
            f"cannot parse DSN {mask_dsn(dsn)!r}: {exc}", hint="use postgresql://user@host:port/dbname"
        ) from None
    query_port = db.url.query.get("port")
    given = [db.url.port, *(query_port if isinstance(query_port, tuple) else (query_port,))]
    _check_ports([str(p) for p in given if p is not None and p != ""])


def _check_ports(values: list[str]) -> None:
    for value in values:
        for port in filter(None, (p.strip() for p in value.split(","))):
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise BadInputError(
                    f"the DSN's port {port!r} is not a port number", hint="use a number from 1 to 65535, e.g. 5432"
                )


def examples(*lines: str) -> Callable[[F], F]:
    """Append an Examples section to a command's --help."""

    def deco(fn: F) -> F:
        text = "\n\n\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
        fn.__doc__ = (fn.__doc__ or "") + text
        return fn

    return deco


class StdoutClosed(Exception):
    """stdout's reader went away. Not an OSError: click would turn an EPIPE into a silent exit 1."""


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            raise StdoutClosed from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--dsn", envvar="DATABASE_URL", help="PostgreSQL DSN (default: $DATABASE_URL, else embedded).")
@click.option("--spec", "spec_path", envvar="MIGRATOR_SPEC", help="Spec TOML file (default: built-in projects).")
@click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output: JSON lines ending with one result object."
)
@click.option("--yes", "-y", is_flag=True, help="Answer yes to confirmations (scripts, CI).")
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks on errors.")
@defaulted(
    "--lock-timeout",
    finite(0, MAX_LOCK_TIMEOUT, min_open=True),
    DEFAULT_LOCK_TIMEOUT,
    "Seconds a DDL step waits for its lock before it retries.",
)
@click.option(
    "--hook-dir",
    envvar="MIGRATOR_HOOK_DIR",
    type=click.Path(exists=True, file_okay=False),
    help="Run the executables in DIR named after an event (or `any`) on that event (default: $MIGRATOR_HOOK_DIR, "
    "else the spec file's [hooks] dir).",
)
@defaulted("--hook-timeout", finite(0, 3600, min_open=True), 30.0, "Seconds a hook may run before it is given up.")
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
    hook_dir: str | None,
    hook_timeout: float,
) -> None:
    """Split a live wide PostgreSQL table into a normalized schema, phase by phase, without downtime.

    \b
    Phases:  expand -> backfill -> validate -> switch-reads -> switch-writes -> contract
    Any state can be rolled back with `migrator rollback`.
    """
    global _verbose  # noqa: PLW0603 — the error handler runs after click's context is gone
    _verbose = verbose
    # `--json` written after the command is a usage error, reported as JSON all the same (it was asked for).
    _outcome.json = _outcome.json or as_json
    if ctx.invoked_subcommand:
        _outcome.command = ctx.invoked_subcommand
    _remember_secret(dsn)
    if dsn:
        check_dsn(dsn)
    ctx.obj = App(dsn or None, spec_path, as_json, yes, verbose, lock_timeout)
    from pathlib import Path

    from migrator.hooks import Hooks

    directory = Path(hook_dir) if hook_dir else None
    if directory is None and spec_path and Path(spec_path).is_file():
        try:
            configured = ctx.obj.spec.hooks  # loaded once: the command reuses it
        except SpecError:
            configured = None  # the command that needs the spec reports it
        if configured is not None:
            # The spec file's [hooks] table; its dir is relative to the file.
            directory = Path(spec_path).resolve().parent / configured.dir
            if ctx.get_parameter_source("hook_timeout") is click.core.ParameterSource.DEFAULT:
                hook_timeout = configured.timeout
            if not directory.is_dir():
                raise click.BadParameter(f"{directory} is not a directory", param_hint="[hooks] dir of the spec")
    if directory is not None:
        hooks = Hooks(directory, hook_timeout, warn=console.warn)
        _outcome.observer.observers.append(hooks)
        _outcome.closers.append(hooks.close)


def context(app: App, reporter: Reporter | None = None, reason: str | None = None) -> Context:
    """The phases' Context for this invocation: its spec, database, DDL lock timeout and reporter."""
    shown = reporter or (console.JsonReporter() if app.json else console.StepReporter())
    return Context(
        app.spec,
        app.db,
        lock_timeout=app.lock_timeout,
        reporter=Observed(shown, app.observer, _outcome.command),
        reason=reason,
        observer=app.observer,
    )


def reporter(app: App, description: str | None = None) -> console.JsonReporter | console.ProgressReporter:
    """JSON event lines with --json, else a progress bar titled `description`."""
    return console.JsonReporter() if app.json else console.ProgressReporter(description or _outcome.command)


def read_state(app: App) -> State:
    """The migration's state and flags as they are now."""
    from migrator import state

    with app.db.connect(autocommit=True) as conn:
        return state.read(conn, app.spec)


def begin(app: App, *, check_spec: bool = False) -> State:
    """Read the state the command starts from (the result's from_state); with `check_spec`, first check the spec
    against the server (types resolve, legacy columns exist: exit 2 naming the key, before any DDL)."""
    from migrator import jobs, spec_check, state

    with app.db.connect(autocommit=True) as conn:
        if check_spec:
            spec_check.check(conn, app.spec, app.spec_path or "<built-in spec projects>")
        current = state.read(conn, app.spec)
    _outcome.before = current
    _outcome.reread = lambda: read_state(app)
    # Each pause of a long job on a health signal, and its end, goes to the audit log.
    app.observer.observers.append(state.HealthAudit(app.db, app.spec, current.state, _outcome.command or "migrator"))
    # What a long job is doing now, for `migrator status` from anywhere (its row goes when the command ends).
    record = jobs.JobRecord(app.db, app.spec, _outcome.command or "migrator")
    app.observer.observers.append(record)
    _outcome.closers.append(record.close)
    _observe_state(app, current)
    if _outcome.command in PHASE_COMMANDS:
        app.observer.event("phase-start", from_state=current.state)
    return current


def _observe_state(app: App, current: State) -> None:
    app.observer.event(
        "state",
        migration=app.spec.migration_name,
        command=_outcome.command,
        state=current.state,
        paused=current.paused,
    )


def done(
    app: App,
    message: str | None = None,
    *,
    details: dict[str, Any] | None = None,
    changed: bool | None = None,
    state: str | None = None,
    from_state: str | None = None,
) -> None:
    """The command succeeded: record its result (printed by main with --json) and say `message` to a human.

    After begin(), the state is read again, and `changed` defaults to whether the state or its flags moved.
    `state`/`from_state` are for commands whose migration is not the --dsn one's (demo)."""
    out = _outcome
    if details:
        out.details.update(details)
    if out.before is not None and state is None:
        out.after = read_state(app)
        _observe_state(app, out.after)
    out.state, out.from_state = state, from_state
    if changed is not None:
        out.changed = changed
    if message and not app.json:
        console.success(message)


def moved(app: App) -> str:
    """'the migration is now in STATE' (after done())."""
    after = _outcome.after or _outcome.before
    return f"the migration is now in {after.state}" if after else "done"


# -- the end: the result, the error, the exit code ---------------------------------------------------------------


def _flags(st: State | None) -> tuple[Any, ...] | None:
    return None if st is None else (st.state, st.read_percent, st.paused)


def _result(code: int, error: results.ErrorInfo | None) -> results.Result:
    out = _outcome
    if error is not None and out.reread is not None and out.after is None and error.code != "connection_failed":
        # Where the migration is now, after the failure (a multi-step rollback may have moved it part-way).
        try:
            out.after = out.reread()
        except Exception:  # the result must still be printed; the state stays unknown
            out.after = None
    after = out.after if out.after is not None else out.before
    state = out.state or (after.state if after else None)
    from_state = out.from_state or (out.before.state if out.before else None)
    changed = out.changed
    if changed is None:
        changed = out.before is not None and out.after is not None and _flags(out.before) != _flags(out.after)
    return results.Result(
        command=out.command,
        ok=code == 0,
        exit_code=code,
        state=state,
        from_state=from_state,
        changed=changed,
        details=results.json_safe(out.details),
        error=error,
        **out.extra,
    )


def _observe_end(code: int, error: results.ErrorInfo | None) -> None:
    """Tell the observers how a phase command ended (phase-success or phase-failure, state-changed), then close
    them (hooks still running are waited for, up to their timeout). An observer never changes the exit code."""
    out = _outcome
    try:
        if out.observer.observers and out.command in PHASE_COMMANDS and out.before is not None:
            result = _result(code, error)
            fields: dict[str, Any] = {"exit_code": code, "from_state": result.from_state, "state": result.state}
            if error is not None:
                fields["error"] = error.message
            out.observer.event("phase-success" if code == 0 else "phase-failure", **fields)
            if result.state != result.from_state:
                out.observer.event("state-changed", from_state=result.from_state, state=result.state)
    except Exception as exc:
        console.warn(f"observers: {exc}")
    for close in out.closers:
        try:
            close()
        except Exception as exc:
            console.warn(f"observers: {exc}")
    out.closers.clear()


def _finish(code: int, error: results.ErrorInfo | None = None) -> NoReturn:
    _observe_end(code, error)
    if _outcome.json:
        try:
            line = _result(code, error).line()
        except ValidationError as exc:
            # A command reported something the contract does not allow: a bug, said as such (and still one object).
            console.error(f"internal error: the result does not fit the JSON contract: {exc}")
            code = 3
            info = results.ErrorInfo(code="unexpected_error", message=f"the result does not fit the contract: {exc}")
            _outcome.details, _outcome.extra, _outcome.state, _outcome.from_state = {}, {}, None, None
            _outcome.before = _outcome.after = None
            line = _result(code, info).line()
        try:
            console.emit(line)
        except BrokenPipeError:
            _broken_pipe()
    try:
        sys.stdout.flush()  # here, not at interpreter exit, where a closed pipe could only be complained about
    except BrokenPipeError:
        _broken_pipe()
    sys.exit(code)


def handle(exc: BaseException) -> tuple[int, results.ErrorInfo]:
    """One line for a human on stderr (a traceback only with -v); the exit code DESIGN.md assigns, and the error
    for the JSON result."""
    if _verbose:
        console.traceback()
    if isinstance(exc, MigratorError):
        console.error(scrub(str(exc)))
        hint = scrub(exc.hint) if exc.hint else None
        return exc.exit_code, results.ErrorInfo(code=results.error_code(exc), message=scrub(exc.message), hint=hint)
    if isinstance(exc, sa_exc.DBAPIError | psycopg.Error):
        orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
        sqlstate = getattr(orig, "sqlstate", None)
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
        message = scrub(f"database error{f' {sqlstate}' if sqlstate else ''}: {first}")
        console.error(message + ("" if _verbose else "  (run with -v for the traceback)"))
        return 3, results.ErrorInfo(code="database_error", message=message, sqlstate=sqlstate)
    if isinstance(exc, OSError):
        message = scrub(f"{exc}")
        console.error(message)
        return 3, results.ErrorInfo(code="os_error", message=message)
    message = scrub(f"unexpected error: {type(exc).__name__}: {exc}")
    console.error(message + "  (run with -v for the traceback)")
    return 3, results.ErrorInfo(code="unexpected_error", message=message)


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so every `finally` (locks, connections) runs on the way out."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


_INTERRUPTED = (
    "interrupted: every completed step is committed; `migrator status` shows where the migration is — "
    "run the same command again to continue, or `migrator rollback`"
)


def _interrupted(exc: BaseException) -> NoReturn:
    # Each step commits on its own, so what finished is kept; the state and the audit log say where it stopped.
    console.error(_INTERRUPTED)
    terminated = isinstance(exc, Terminated)
    info = results.ErrorInfo(
        code="terminated" if terminated else "interrupted",
        message=_INTERRUPTED.split(":", 1)[0] + (" by SIGTERM" if terminated else " by Ctrl-C"),
        hint="`migrator status` shows where the migration is; run the same command again to continue",
    )
    _finish(143 if terminated else 130, info)


def _broken_pipe() -> NoReturn:
    """The reader of stdout went away (`migrator plan | head`): stop quietly, as a process killed by SIGPIPE would
    (141). stdout is pointed at /dev/null first, or Python's own flush at exit would complain on stderr."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # no real file descriptor (tests capture stdout): nothing will flush into a closed pipe
    sys.exit(141)


def _from_argv(argv: list[str] | None) -> None:
    """What the result needs before click has parsed anything (a usage error in the global options): --json and the
    command's name, from the raw arguments."""
    args = sys.argv[1:] if argv is None else argv
    _outcome.json = "--json" in args
    _outcome.command = next((a for a in args if a in cli.commands), "migrator")


def main(argv: list[str] | None = None) -> None:
    global _outcome, _verbose  # one Outcome per invocation (tests call main() many times)
    _outcome, _verbose = Outcome(), False
    _from_argv(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        rv = cli.main(args=argv, prog_name="migrator", standalone_mode=False)
        if isinstance(rv, int):
            sys.exit(rv)  # --help, --version: text, not a command's result
    except (BrokenPipeError, StdoutClosed):
        _broken_pipe()
    except SystemExit:
        # click met the closed pipe itself (printing --help): it wraps stdout and exits 1; we exit like `| head`.
        if type(sys.stdout).__name__ == "_PacifyFlushWrapper":
            _broken_pipe()
        raise
    except click.exceptions.Abort as exc:
        # click turns Ctrl-C (and SIGTERM, raised as one) into Abort; a declined confirmation is an Abort too.
        if isinstance(exc.__context__, KeyboardInterrupt):
            _interrupted(exc.__context__)
        console.error("aborted")
        _finish(1, results.ErrorInfo(code="aborted", message="aborted"))
    except click.ClickException as exc:
        exc.show()
        code = BadInputError.exit_code if exc.exit_code == 2 else exc.exit_code
        _finish(code, results.ErrorInfo(code="usage_error", message=scrub(exc.format_message())))
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except Exception as exc:
        if _broken_pipe_in(exc):
            _broken_pipe()
        _finish(*handle(exc))
    _finish(0)


def _broken_pipe_in(exc: BaseException) -> bool:
    """A BrokenPipeError raised while another exception was being handled (or re-raised as one)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BrokenPipeError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
