"""The one JSON encoding of the tool's output (`--json` lines, report files, audit-log details).

Values that JSON has no type for: datetimes and dates as ISO 8601; Decimal as its exact text (a float would round a
numeric(20,2) amount, and a report must show the value the database holds); sets and tuples as lists; anything
else (paths, UUIDs) as its text.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any


def default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(value, default=default, **kwargs)
