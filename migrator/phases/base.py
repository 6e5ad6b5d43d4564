"""The Phase every phase module implements: plan / apply / verify / rollback side by side, with typed Options.

A phase only orchestrates: the engines it drives (the copy engines, the verifier, the SQL generators, the Action
runner) live below it, in copy/, verify/, sqlgen/ and engine/, and never import a phase.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import psycopg

from migrator import lifecycle
from migrator.engine.actions import Action
from migrator.engine.context import Context, Report
from migrator.engine.health import Limits

OptionsT = TypeVar("OptionsT")


@dataclass(frozen=True)
class NoOptions:
    """A phase that takes no options."""


@dataclass(frozen=True)
class RollbackOptions:
    """What `migrator rollback [--to STATE]` may be asked; each step of a multi-step rollback gets the same."""

    # From dual_write: drop the split tables too (asks for confirmation in the CLI).
    drop_tables: bool = False
    # From contracted: cap the reverse backfill (leaves CPU to the application).
    max_rows_per_second: float | None = None
    # From contracted: the reverse backfill's pace adapts to the application's load unless this is set.
    full_speed: bool = False
    # A step that removes the reverse sync first waits until the split tables have had no direct write for this
    # long (application instances see a flag change late), checking for up to `wait` seconds before it refuses.
    quiet_period: float = 60.0
    wait: float = 0.0
    # From contracted: the reverse backfill waits between chunks while a health signal is past these limits.
    health: Limits = field(default_factory=Limits)


class Phase(ABC, Generic[OptionsT]):
    """One phase: `plan` returns the Actions `apply` runs (dry run and live run share one path), `verify` checks its
    postconditions (the guard of the next transition), `rollback` undoes it without losing a write made meanwhile.

    `name` is the CLI command that enters the phase's state (lifecycle.STAGES names it too)."""

    name: ClassVar[str]
    # The phase's Options class; every field has a default, so Options() is the phase run as `migrator plan` shows it.
    options_type: ClassVar[type[Any]]

    def __init__(self, options: OptionsT | None = None) -> None:
        self.options: OptionsT = options if options is not None else type(self).options_type()

    @property
    def entered(self) -> str:
        """The state this phase enters (from lifecycle.STAGES)."""
        return lifecycle.entered_by(self.name)

    @property
    def left(self) -> str:
        """The state this phase starts from, and the one its rollback returns to."""
        return lifecycle.left_by(self.name)

    @abstractmethod
    def plan(self, ctx: Context, conn: psycopg.Connection[Any] | None = None) -> list[Action]:
        """The SQL the phase runs, in order; with `conn`, as the catalog makes it (without, as `migrator plan`
        shows it from the spec alone)."""

    @abstractmethod
    def apply(self, ctx: Context) -> None: ...

    @abstractmethod
    def verify(self, ctx: Context) -> Report: ...

    @abstractmethod
    def rollback(self, ctx: Context, opts: RollbackOptions) -> None: ...
