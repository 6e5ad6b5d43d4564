"""migrator for Django applications (`pip install migrator[django]`, Django >= 4.2).

    INSTALLED_APPS = [..., "migrator.contrib.django"]
    MIGRATOR = {"spec": "projects"}                         # see migrator.contrib.django.conf

    from migrator.contrib.django import reads_split, writes_split, split_path, use_split

    Project = split.Project if reads_split(request.user.pk) else core.Project

The flags come from one process-wide FlagReader built from DATABASES (no second DSN), created on first use and
rebuilt in a forked worker. `python manage.py migrator <command> …` runs any migrator command on the same
database; `manage.py check --database default` warns when the migration's state and the installed models disagree.
"""

from __future__ import annotations

from migrator.contrib.django.flags import get_reader, reset
from migrator.contrib.django.routing import (
    Path,
    SplitPathMiddleware,
    current_path,
    decide,
    reads_split,
    split_path,
    use_split,
    writes_split,
)

__all__ = [
    "Path",
    "SplitPathMiddleware",
    "current_path",
    "decide",
    "get_reader",
    "reads_split",
    "reset",
    "split_path",
    "state",
    "use_split",
    "writes_split",
]


def state() -> str:
    """The migration's state, as this process's reader last loaded it."""
    return get_reader().state()
