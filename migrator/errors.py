"""Typed errors. Each carries the CLI exit code DESIGN.md assigns to its kind."""

from __future__ import annotations


class MigratorError(Exception):
    """Base class: a message for a human, and the exit code the CLI returns."""

    exit_code = 3

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class BadInputError(MigratorError):
    """Bad spec, options or arguments (exit 2)."""

    exit_code = 2


class SpecError(BadInputError):
    """The spec file is wrong; the message names the file, the key path and the fix."""


class ConfirmationRequired(BadInputError):
    """A destructive command ran without a terminal and without --yes."""


class GuardFailed(MigratorError):
    """A check failed or a state guard refused the transition (exit 1)."""

    exit_code = 1


class WrongState(GuardFailed):
    """The migration is not in a state where this command may run."""


class LockHeld(GuardFailed):
    """Another operator holds the migration's advisory lock."""


class OperationalError(MigratorError):
    """Database unreachable, missing table, timeouts (exit 3)."""

    exit_code = 3


class ConnectionFailed(OperationalError):
    """The server could not be reached (the retry policies treat this as a lost connection)."""


class TableDoesNotExist(OperationalError):
    """A table the spec names is not in the database."""
