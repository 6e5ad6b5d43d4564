"""Report files for CI: JUnit XML (one testcase per check or step) and JSON.

JUnit is the format every CI system renders (GitLab, Jenkins, GitHub test reporters): a failing check shows as a
failing test with its first failing keys in the message body. The XML is built with ElementTree, so quoting is
ElementTree's; characters XML 1.0 cannot carry at all (control characters a legacy text column may hold) are
replaced first, or the file would not parse.
"""

from __future__ import annotations

import os
import re
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from migrator import jsonenc

JUNIT_FAILURE_LINES = 50  # failing keys listed per testcase; the count and the JSON report have them all

_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass
class JUnitCase:
    """One <testcase>: a check of a validation, or a step of a rehearsal."""

    name: str
    classname: str
    seconds: float = 0.0
    failure: str | None = None  # the failure message; None = passed
    failure_lines: list[str] = field(default_factory=list)
    failure_count: int | None = None
    skipped: str | None = None
    error: str | None = None  # an exception rather than a failed check
    output: str | None = None


class JUnitReportable(Protocol):
    @property
    def suite_name(self) -> str: ...

    def junit_cases(self) -> list[JUnitCase]: ...

    def as_dict(self) -> dict[str, Any]: ...


def _clean(text: str) -> str:
    return _XML_ILLEGAL.sub("\ufffd", text)


def junit_xml(suite_name: str, cases: list[JUnitCase], *, properties: dict[str, Any] | None = None) -> bytes:
    """A <testsuites> document with one <testsuite> holding `cases`."""
    failures = sum(1 for c in cases if c.failure is not None and c.error is None)
    errors = sum(1 for c in cases if c.error is not None)
    skipped = sum(1 for c in cases if c.skipped is not None)
    seconds = sum(c.seconds for c in cases)
    counts = {
        "tests": str(len(cases)),
        "failures": str(failures),
        "errors": str(errors),
        "skipped": str(skipped),
        "time": f"{seconds:.3f}",
    }
    root = ET.Element("testsuites", {"name": _clean(suite_name), **counts})
    suite = ET.SubElement(
        root,
        "testsuite",
        {"name": _clean(suite_name), **counts, "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")},
    )
    if properties:
        props = ET.SubElement(suite, "properties")
        for key, value in properties.items():
            ET.SubElement(props, "property", {"name": _clean(str(key)), "value": _clean(str(value))})
    for case in cases:
        el = ET.SubElement(
            suite,
            "testcase",
            {"name": _clean(case.name), "classname": _clean(case.classname), "time": f"{case.seconds:.3f}"},
        )
        if case.skipped is not None:
            ET.SubElement(el, "skipped", {"message": _clean(case.skipped)})
        elif case.error is not None:
            err = ET.SubElement(el, "error", {"message": _clean(case.error.splitlines()[0] if case.error else "")})
            err.text = _clean(case.error)
        elif case.failure is not None:
            fail = ET.SubElement(el, "failure", {"message": _clean(case.failure), "type": "ValidationFailure"})
            lines = case.failure_lines[:JUNIT_FAILURE_LINES]
            total = case.failure_count if case.failure_count is not None else len(case.failure_lines)
            if total > len(lines):
                lines.append(f"… and {total - len(lines):,} more (the JSON report lists them all)")
            fail.text = _clean("\n".join(lines))
        if case.output:
            ET.SubElement(el, "system-out").text = _clean(case.output)
    ET.indent(root)
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body + b"\n"


def write_junit(result: JUnitReportable, path: str | Path) -> None:
    """Write `result` (a ValidationResult or a RehearsalResult) as JUnit XML."""
    _write_atomic(Path(path), junit_xml(result.suite_name, result.junit_cases()))


def write_json(result: JUnitReportable, path: str | Path) -> None:
    """Write `result.as_dict()` as indented JSON."""
    text = jsonenc.dumps(result.as_dict(), indent=2, ensure_ascii=False) + "\n"
    _write_atomic(Path(path), text.encode())


def _write_atomic(path: Path, data: bytes) -> None:
    # CI picks the file up after the run; a half-written report from a killed run must not look like a result.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
