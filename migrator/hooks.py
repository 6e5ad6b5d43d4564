"""Event hooks (issue 20): executables in a directory (`--hook-dir`, or MIGRATOR_HOOK_DIR) that run when something
happens to the migration, to page someone, post to a chat, or hold a step back.

A hook named `<event>` or `<event>.<anything>` runs on that event; one named `any` or `any.<anything>` on every
event. Each gets the event as JSON on stdin and as environment variables (MIGRATOR_EVENT, MIGRATOR_MIGRATION,
MIGRATOR_STATE, MIGRATOR_PHASE, and MIGRATOR_<FIELD> for each of the event's plain fields), and runs with a
timeout. A hook that fails or times out is warned about and never breaks the migration — except a gate's own hook
(`before-contract`, `before-finalize`): a non-zero exit, or no answer within the timeout, refuses that step (exit 1,
naming the hook).

Ordinary events are run in order on one background thread, so a slow hook never holds a chunk (or the health
check that noticed a red signal) back; `close` waits for the ones still queued, each within its timeout.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from migrator import jsonenc
from migrator.errors import GuardFailed

EVENTS = (
    "phase-start",
    "phase-success",
    "phase-failure",
    "state-changed",
    "throttled",
    "unthrottled",
    "paused",
    "resumed",
    "validation-failed",
    "quarantine-grew",
)
GATES = ("before-contract", "before-finalize")
ANY = "any"
DEFAULT_TIMEOUT = 30.0
# quarantine-grew is told at most this often (seconds) while a copy keeps quarantining rows, with the rows since.
QUARANTINE_EVERY = 30.0


def hooks_for(directory: Path, event: str, *, include_any: bool = True) -> list[Path]:
    """The executables in `directory` that run on `event`, in name order (`any` hooks with them)."""
    names = (event, ANY) if include_any else (event,)
    found = []
    for path in sorted(directory.iterdir()):
        stem = path.name.split(".", 1)[0]
        if stem in names and not path.name.startswith(".") and path.is_file() and os.access(path, os.X_OK):
            found.append(path)
    return found


class Hooks:
    """The hooks of one directory; an Observer (migrator.engine.context) that runs them."""

    def __init__(
        self, directory: Path, timeout: float = DEFAULT_TIMEOUT, warn: Callable[[str], None] = lambda _m: None
    ) -> None:
        self.directory, self.timeout, self.warn = directory, timeout, warn
        # What every event says besides its own fields: the migration, its state, the command running.
        self.context: dict[str, Any] = {}
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._quarantined = 0
        self._quarantine_told: float | None = None

    # -- the Observer ------------------------------------------------------------------------------------------

    def event(self, name: str, **fields: Any) -> None:
        if name == "state":
            with self._lock:
                self.context.update(
                    migration=fields.get("migration"), state=fields.get("state"), phase=fields.get("command")
                )
            return
        if name == "progress" and fields.get("rejected"):
            self._quarantine(int(fields["rejected"]), fields.get("job"))
            return
        if name not in EVENTS:
            return
        if name in ("phase-success", "phase-failure"):
            self._flush_quarantine()
        if name == "state-changed":
            with self._lock:
                self.context["state"] = fields.get("state")
        self._submit(name, fields)

    def gate(self, name: str, **fields: Any) -> None:
        """Run the gate's own hooks now, in order: the first that does not exit 0 refuses the step. `any` hooks
        are told too, in the background, and have no say."""
        payload = self._payload(name, fields)
        for path in hooks_for(self.directory, name, include_any=False):
            code, output = self._run(path, payload)
            if code != 0:
                said = f": {output}" if output else ""
                raise GuardFailed(
                    f"`{name}` refused by the hook {path} ({self._why(code)}){said}",
                    hint=f"see why the hook refused; fix it or take it out of {self.directory}, then run again",
                )
        self._submit(name, fields, only_any=True)

    # -- running -------------------------------------------------------------------------------------------------

    def _quarantine(self, rows: int, job: Any) -> None:
        with self._lock:
            self._quarantined += rows
            now = time.monotonic()
            if self._quarantine_told is not None and now - self._quarantine_told < QUARANTINE_EVERY:
                return
            rows, self._quarantined, self._quarantine_told = self._quarantined, 0, now
        self._submit("quarantine-grew", {"rows": rows, "job": job})

    def _submit(self, name: str, fields: dict[str, Any], only_any: bool = False) -> None:
        payload = self._payload(name, fields)
        paths = hooks_for(self.directory, ANY if only_any else name)
        if not paths:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="hooks", daemon=True)
                self._thread.start()
        for path in paths:
            self._queue.put((str(path), payload))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            path, payload = item
            code, output = self._run(Path(path), payload)
            if code != 0:
                self.warn(f"hook {path} on {payload['event']}: {self._why(code)}" + (f": {output}" if output else ""))

    def _why(self, code: int | None) -> str:
        return f"no answer within {self.timeout:g} s" if code is None else f"exit {code}"

    def _payload(self, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            context = dict(self.context)
        return {
            "event": name,
            **context,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            **fields,
        }

    def _run(self, path: Path, payload: dict[str, Any]) -> tuple[int | None, str]:
        """Run one hook: (its exit code, None when it timed out; the last line it wrote, or why it did not start)."""
        env = dict(os.environ)
        for key, value in payload.items():
            if isinstance(value, str | int | float | bool) or value is None:
                env[f"MIGRATOR_{key.upper().replace('-', '_')}"] = "" if value is None else str(value)
        try:
            # The operator's own executable, from the directory they named: running it is the point.
            done = subprocess.run(  # noqa: S603
                [str(path)],
                input=jsonenc.dumps(payload),
                capture_output=True,
                text=True,
                env=env,
                cwd=self.directory,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None, ""
        except OSError as exc:  # e.g. a script without a valid #! line
            return 126, str(exc)
        lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
        return done.returncode, lines[-1][:300] if lines else ""

    def _flush_quarantine(self) -> None:
        with self._lock:
            rows, self._quarantined = self._quarantined, 0
        if rows:
            self._submit("quarantine-grew", {"rows": rows})

    def close(self) -> None:
        """Tell what is still pending (quarantine), then wait for the queued hooks to finish."""
        self._flush_quarantine()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
