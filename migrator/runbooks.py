"""The on-call pages in runbooks/, one per state, and the console commands they contain."""

from __future__ import annotations

import re

from migrator.errors import BadInputError
from migrator.lifecycle import STATES
from migrator.sqlgen.compose import runbooks_dir

_CONSOLE_BLOCK = re.compile(r"```console\n(.*?)```", re.DOTALL)


def page(state: str) -> str:
    if state not in STATES:
        raise BadInputError(f"unknown state {state!r}", hint=f"use one of: {', '.join(STATES)}")
    return (runbooks_dir() / f"{state}.md").read_text()


def commands(text: str) -> list[str]:
    """Every `$ command` line of the page's ```console blocks, in order (the runbook test runs them)."""
    out: list[str] = []
    for block in _CONSOLE_BLOCK.findall(text):
        out += [line[2:].strip() for line in block.splitlines() if line.startswith("$ ")]
    return out
