"""Which path a request takes: the legacy model or the split ones, decided once per request from one consistent
load of the flags, so a request never reads one side and then the other when a transition lands mid-request.

    with split_path(request.user.pk) as path:
        Project = path.read_model(LegacyProject, split.Project)

    @use_split(lambda request, *args, **kwargs: request.user.pk)
    def project_list(request):
        if current_path().reads_split: ...
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from migrator import lifecycle
from migrator.contrib.django.flags import get_reader
from migrator.flags import bucket

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Path:
    """The side one request reads and writes."""

    state: str
    reads_split: bool
    writes_split: bool
    key: str | int | None = None

    def read_model(self, legacy: T, split: T) -> T:
        """The model (or anything: a queryset, a function) to read with."""
        return split if self.reads_split else legacy

    def write_model(self, legacy: T, split: T) -> T:
        """The model to write with."""
        return split if self.writes_split else legacy


_current: ContextVar[Path | None] = ContextVar("migrator_path", default=None)


def decide(key: str | int | None = None) -> Path:
    """The path for request key `key`, from one load of the flags (the same rule as FlagReader.reads_split)."""
    reader = get_reader()
    flags = reader.flags()
    if flags.state == "read_new":
        # Per key in read_new: read_percent% of keys, always the same ones; no key reads split only at 100%.
        reads = flags.read_percent >= 100 if key is None else bucket(reader.migration, key) < flags.read_percent
    else:
        reads = lifecycle.reads_split(flags.state)
    return Path(flags.state, reads, lifecycle.writes_split(flags.state), key)


def reads_split(key: str | int | None = None) -> bool:
    """Read from the split models? Inside split_path/use_split, the request's decision."""
    current = _current.get()
    if current is not None and (key is None or key == current.key):
        return current.reads_split
    return decide(key).reads_split


def writes_split() -> bool:
    """Write through the split models (write_new and contracted)?"""
    current = _current.get()
    return current.writes_split if current is not None else lifecycle.writes_split(get_reader().state())


def current_path(key: str | int | None = None) -> Path:
    """The path of the request being served (inside split_path/use_split), else decided now for `key`."""
    return _current.get() or decide(key)


@contextmanager
def split_path(key: str | int | None = None) -> Iterator[Path]:
    """Decide the request's path once and keep it for the block (nested blocks keep the outer decision)."""
    outer = _current.get()
    if outer is not None:
        yield outer
        return
    token = _current.set(decide(key))
    try:
        current = _current.get()
        assert current is not None
        yield current
    finally:
        _current.reset(token)


def use_split(key: Callable[..., str | int | None] | None = None) -> Callable[[F], F]:
    """Decorate a view (or any function): `key(*args, **kwargs)` names the request key (e.g. the user's id), and
    the call runs inside split_path(key), so current_path()/reads_split() answer for this request."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with split_path(key(*args, **kwargs) if key is not None else None):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco


class SplitPathMiddleware:
    """Every request inside split_path(user id): add "migrator.contrib.django.routing.SplitPathMiddleware" to
    MIDDLEWARE after the authentication middleware. Anonymous requests have no key (legacy until 100%)."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        user = getattr(request, "user", None)
        key = user.pk if user is not None and getattr(user, "is_authenticated", False) else None
        with split_path(key):
            return self.get_response(request)
