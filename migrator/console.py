"""Everything a person sees: the only module that imports rich.

Data goes to stdout (tables, JSON, SQL); messages, progress and errors go to stderr, so `migrator plan > x.sql`
and `migrator status --json | jq` stay clean.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markdown import Markdown
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.syntax import Syntax
from rich.table import Table

from migrator import jsonenc, results
from migrator.errors import ConfirmationRequired


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich would exit 1 here; the CLI exits quietly with 141, as a process killed by SIGPIPE (`| head`).
        self.quiet = True
        raise BrokenPipeError


out = _Console(highlight=False, soft_wrap=True)
err = _Console(stderr=True, highlight=False, soft_wrap=True)


def to_json(value: Any) -> str:
    return jsonenc.dumps(value)


def print_json(value: Any) -> None:
    # Plain print, not rich: JSON must not be wrapped or styled.
    emit(to_json(value))


def emit(line: str) -> None:
    """One line on stdout, flushed (a JSON line of `--json` output: an event, or the command's result)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {_escape(message)}")


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {_escape(message)}")


def info(message: str) -> None:
    err.print(_escape(message))


def success(message: str) -> None:
    err.print(f"[green]✓[/] {_escape(message)}")


def traceback() -> None:
    err.print_exception(show_locals=False)


def _escape(text: str) -> str:
    return text.replace("[", "\\[")


def sql_script(text: str) -> None:
    if out.is_terminal:
        out.print(Syntax(text, "sql", theme="ansi_dark", word_wrap=True))
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def python_source(text: str) -> None:
    """Generated Python (`migrator models`): highlighted on a terminal, as it is when redirected to a file."""
    if out.is_terminal:
        out.print(Syntax(text, "python", theme="ansi_dark", word_wrap=False))
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def measured_report(details: dict[str, Any]) -> None:
    """`migrator report`: storage per relation and index, the query timings, the seed's claims with verdicts."""
    rows: list[list[Any]] = []
    for side in ("legacy", "split"):
        for rel in details["storage"][side]["relations"]:
            rows.append(
                [
                    side,
                    rel["name"],
                    rel["rows"],
                    human_bytes(rel["heap"]),
                    human_bytes(rel["toast"]),
                    human_bytes(sum(rel["indexes"].values())),
                    human_bytes(rel["total"]),
                ]
            )
            rows += [["", f"  index {n}", None, "", "", human_bytes(b), ""] for n, b in rel["indexes"].items()]
        s = details["storage"][side]
        rows.append(
            [
                side,
                "total",
                None,
                human_bytes(s["heap"]),
                human_bytes(s["toast"]),
                human_bytes(s["indexes"]),
                human_bytes(s["total"]),
            ]
        )
    table("storage", ["side", "relation", "rows (est.)", "heap", "TOAST", "indexes", "total"], rows)
    table(
        f"queries (median of {details['runs']} runs, ms)",
        ["query", "legacy", "split", "change", "round trips", "split plan"],
        [
            [
                q["name"],
                q["legacy"]["median_ms"],
                q["split"]["median_ms"],
                f"{q['change_pct']:+.1f}%",
                f"{q['legacy']['statements']} → {q['split']['statements']}",
                "; ".join(q["split"]["scans"]),
            ]
            for q in details["queries"]
        ],
    )
    colour = {"met": "green", "partly met": "yellow", "not met": "red"}
    t = Table(title="the seed's expectations", title_justify="left")
    for col in ("claim", "expected", "measured", "verdict"):
        t.add_column(col)
    for e in details["expectations"]:
        t.add_row(
            _escape(e["claim"]),
            _escape(e["expected"]),
            _escape(e["measured"]),
            f"[{colour.get(e['verdict'], 'white')}]{_escape(e['verdict'])}[/]",
        )
    out.print(t)
    for note in details.get("notes", []):
        info(f"note: {note}")


def markdown(text: str) -> None:
    if out.is_terminal:
        out.print(Markdown(text))
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left", show_lines=False)
    for i, col in enumerate(columns):
        t.add_column(col, justify="right" if i and _numeric_column(rows, i) else "left")
    for row in rows:
        t.add_row(*("" if v is None else _escape(fmt(v)) for v in row))
    out.print(t)


def _numeric_column(rows: Sequence[Sequence[Any]], i: int) -> bool:
    return bool(rows) and all(isinstance(r[i], int | float) or r[i] is None for r in rows)


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def human_bytes(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"


def confirm(question: str, *, assume_yes: bool) -> None:
    """Ask before something is dropped or archived; never hang without a terminal."""
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise ConfirmationRequired(f"{question} — no terminal to ask on", hint="re-run with --yes to confirm")
    answer = err.input(f"{_escape(question)} [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise ConfirmationRequired("not confirmed; nothing was changed")


class ProgressReporter:
    """Rich progress bar with rows, rows/s and ETA (the phase Reporter protocol)."""

    def __init__(self, description: str) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self._task: TaskID | None = None
        self._description = description
        self._started = time.monotonic()

    def step(self, message: str) -> None:
        self._progress.console.print(f"  [dim]·[/] {_escape(message)}")

    def progress(self, done: int, total: int | None, **fields: Any) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = f"{done / elapsed:,.0f} rows/s"
        if pace := fields.get("pace"):
            rate += f" ({_escape(str(pace).split(':')[0])})"  # the duty; the reason is a step line when it changes
        if self._task is None:
            self._task = self._progress.add_task(self._description, total=total, rate=rate)
        self._progress.update(self._task, completed=done, total=total, rate=rate)

    @contextmanager
    def running(self) -> Iterator[ProgressReporter]:
        with self._progress:
            yield self


class JsonReporter:
    """One JSON object per line, each with its `event` and a `ts` (migrator.results: StepEvent, ProgressEvent)."""

    def step(self, message: str) -> None:
        print_json(results.event("step", message=message))

    def progress(self, done: int, total: int | None, **fields: Any) -> None:
        # The contract's own keys win over a job's counters of the same name.
        print_json({**fields, **results.event("progress", done=done, total=total)})

    @contextmanager
    def running(self) -> Iterator[JsonReporter]:
        yield self


class StepReporter:
    """Plain step lines on stderr, for phases without a progress bar."""

    def step(self, message: str) -> None:
        err.print(f"  [dim]·[/] {_escape(message)}")

    def progress(self, done: int, total: int | None, **fields: Any) -> None:
        pass

    @contextmanager
    def running(self) -> Iterator[StepReporter]:
        yield self
