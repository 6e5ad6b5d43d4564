"""The JSON contract of `migrator --json`: what scripts and CI may rely on, as pydantic models.

With `--json`, stdout carries one JSON object per line. While a command runs it may print event lines
(`{"event": "step" | "progress", "ts": …}`); it always ends with exactly one `Result` line
(`{"event": "result", "command", "ok", "exit_code", "state", "from_state", "changed", "details", "error"?}`),
failing commands included: the error is in that object, and the object's `exit_code` is the process's.

`state` and `from_state` are bare lifecycle states (or null where a command has no migration to look at); what a
command found or did is in `details`, whose keys each command documents in its `--help` and README row.

The JSON Schema generated from these models is committed as docs/json-schema.json (a test keeps it equal to
`schema_text()`); regenerate it with `python -m migrator.results > docs/json-schema.json`.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, WithJsonSchema, model_validator

from migrator import jsonenc, lifecycle
from migrator.errors import MigratorError


def _known_state(value: str) -> str:
    if value not in lifecycle.STATES:
        raise ValueError(f"{value!r} is not a lifecycle state (one of {', '.join(lifecycle.STATES)})")
    return value


StateName = Annotated[
    str,
    AfterValidator(_known_state),
    WithJsonSchema({"type": "string", "enum": list(lifecycle.STATES), "description": "A bare lifecycle state."}),
]


def now() -> datetime:
    return datetime.now(UTC)


class ErrorInfo(BaseModel):
    """Why a command failed: a stable code to branch on, one line for a human, and what to do."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(
        pattern=r"^[a-z][a-z0-9_]*$",
        description="Stable, snake_case: usage_error, bad_input, spec_error, confirmation_required, guard_failed, "
        "wrong_state, validation_failed, lock_held, not_quiet, legacy_not_quiet, operational_error, "
        "connection_failed, table_does_not_exist, transaction_pooler, database_error, os_error, aborted, interrupted, "
        "terminated, unexpected_error (new codes may be added; exit_code says which kind).",
    )
    message: str
    hint: str | None = None
    sqlstate: str | None = Field(default=None, description="The server's SQLSTATE, for database errors.")


class Result(BaseModel):
    """The last line of every `--json` command."""

    # Only `runbook` prints keys beyond these (its `markdown` and `commands`, kept at the top level for scripts
    # written against 0.1; they are in `details` too). Anything else at the top level is not part of the contract.
    # The schema states the rule the validator below enforces: ok <=> exit_code 0 <=> no error.
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "if": {"properties": {"ok": {"const": True}}},
            "then": {"properties": {"exit_code": {"const": 0}}, "not": {"required": ["error"]}},
            "else": {"properties": {"exit_code": {"minimum": 1}}, "required": ["error"]},
        },
    )

    event: Literal["result"] = "result"
    ts: datetime = Field(default_factory=now, description="When the command ended (UTC, ISO 8601).")
    command: str = Field(description="The command that ran (`migrator COMMAND`), e.g. `switch-reads`.")
    ok: bool = Field(description="True exactly when exit_code is 0.")
    exit_code: int = Field(
        ge=0,
        le=255,
        description="The process's exit code: 0 ok, 1 a check failed or a guard refused, 2 bad input, "
        "3 database/operational error, 130 interrupted, 143 terminated.",
    )
    state: StateName | None = Field(
        description="The migration's state when the command ended (null: no migration database involved, or it "
        "could not be read)."
    )
    from_state: StateName | None = Field(description="The migration's state when the command started.")
    changed: bool = Field(
        description="Whether the command changed anything: the migration's state or flags (a transition, "
        "pause/resume, a raised read percentage), data (seed, demo), or the embedded server (embedded "
        "--stop/--purge). False for read-only commands and for a refused command that changed nothing."
    )
    details: dict[str, Any] = Field(default_factory=dict, description="What the command found or did.")
    error: ErrorInfo | None = Field(default=None, description="Present exactly when ok is false.")

    @model_validator(mode="after")
    def _consistent(self) -> Result:
        if self.ok != (self.exit_code == 0):
            raise ValueError("ok must be true exactly when exit_code is 0")
        if self.ok == (self.error is not None):
            raise ValueError("error must be present exactly when ok is false")
        return self

    def line(self) -> str:
        data = self.model_dump(mode="json", exclude={"error"} if self.error is None else set())
        return jsonenc.dumps(data)


class StepEvent(BaseModel):
    """A step a command is taking (one line each)."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["step"] = "step"
    ts: datetime = Field(default_factory=now)
    message: str


class ProgressEvent(BaseModel):
    """Progress of a long job (backfill chunks, validation chunks, seeding): `done` of `total`, plus the job's own
    counters (e.g. rows_total, rows_per_second, chunk_rows)."""

    model_config = ConfigDict(extra="allow")

    event: Literal["progress"] = "progress"
    ts: datetime = Field(default_factory=now)
    done: int
    total: int | None


Line = Annotated[Result | StepEvent | ProgressEvent, Field(discriminator="event")]
_LINE = TypeAdapter(Line)


def parse_line(text: str) -> Result | StepEvent | ProgressEvent:
    """One stdout line of `--json` output, validated against the contract (raises pydantic's ValidationError)."""
    return _LINE.validate_json(text)


def event(kind: Literal["step", "progress"], **fields: Any) -> dict[str, Any]:
    """An event line's object: its kind, a timestamp, and the fields."""
    return {"event": kind, "ts": now().isoformat(timespec="milliseconds").replace("+00:00", "Z"), **fields}


def json_safe(value: Any) -> Any:
    """`value` as plain JSON data (datetimes, Decimals, paths … as the tool's one JSON encoding writes them)."""
    return json.loads(jsonenc.dumps(value))


# -- errors -------------------------------------------------------------------------------------------------------


# The base classes' codes; every other MigratorError's code is its class name in snake_case (WrongState ->
# wrong_state), so a new error class gets a code of its own without a second list to keep.
_BASE_CODES = {"MigratorError": "operational_error", "BadInputError": "bad_input"}


def error_code(exc: BaseException) -> str:
    """The `error.code` of a MigratorError (unexpected_error for anything else)."""
    if not isinstance(exc, MigratorError):
        return "unexpected_error"
    name = type(exc).__name__
    return _BASE_CODES.get(name) or re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# -- the schema -----------------------------------------------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one stdout line of `--json` output (an event or the result)."""
    schema = _LINE.json_schema()
    # Fields with a default are still always printed: the schema requires them.
    for name, always in (
        ("Result", ("event", "ts", "details")),
        ("StepEvent", ("event", "ts")),
        ("ProgressEvent", ("event", "ts")),
    ):
        model = schema["$defs"][name]
        model["required"] = sorted({*model.get("required", ()), *always})
    # A printed result carries an error object or no `error` key at all, never null.
    schema["$defs"]["Result"]["properties"]["error"] = {
        "$ref": "#/$defs/ErrorInfo",
        "description": "Present exactly when ok is false.",
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "migrator --json output line",
        "description": (__doc__ or "").split("\n\n")[1].replace("\n", " "),
        **schema,
    }


def schema_text() -> str:
    """docs/json-schema.json's exact content."""
    return jsonenc.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(schema_text())
