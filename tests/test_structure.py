"""The shape of the code (issue 15): module sizes, layers that only import downwards, the lifecycle order written
once, and each domain rule written once. These fail on a regression of the redesign, not on behaviour."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from migrator import lifecycle

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parent.parent / "migrator"
MAX_LINES = 600
MAX_PHASE_LINES = 250

# Lower number = lower layer. A module may import only from its own layer or below.
LAYERS: list[tuple[str, int]] = [
    ("migrator.errors", 0),
    ("migrator.spec", 0),
    ("migrator.jsonenc", 0),
    ("migrator.lifecycle", 0),
    ("migrator.results", 0),
    ("migrator.embedded", 0),
    ("migrator.db", 1),
    ("migrator.sqlgen", 2),
    ("migrator.engine", 2),
    ("migrator.metrics", 2),
    ("migrator.hooks", 2),
    ("migrator.state", 3),
    ("migrator.seed", 3),
    ("migrator.runbooks", 3),
    ("migrator.flags", 3),
    ("migrator.status", 3),
    ("migrator.jobs", 3),
    ("migrator.snapshots", 3),
    ("migrator.doctor", 3),
    ("migrator.preflight", 3),
    ("migrator.spec_check", 3),
    ("migrator.infer", 3),
    ("migrator.modelgen", 3),
    ("migrator.verify", 4),
    ("migrator.copy", 4),
    ("migrator.guards", 4),
    ("migrator.report", 4),
    ("migrator.cleanup", 4),
    ("migrator.phases", 5),
    ("migrator.operations", 6),
    ("migrator.rehearse", 6),
    ("migrator.demo", 6),
    ("migrator.console", 7),
    ("migrator.cli", 7),
    ("migrator.contrib", 8),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _layer(module: str) -> int:
    if module == "migrator":
        return 0
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{module} has no layer in tests/test_structure.py: add it to LAYERS")


def _imports(path: Path) -> set[str]:
    """Every migrator module `path` imports, at the top or inside a function (a lazy import is still an arrow)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("migrator")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("migrator"):
            found.add(node.module)
            # `from migrator.sqlgen import names` imports the module migrator.sqlgen.names
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_module_is_too_long() -> None:
    """No file under migrator/ is over 600 lines, and each phase module is at most 250."""
    for name, path in _modules().items():
        lines = len(path.read_text().splitlines())
        limit = MAX_PHASE_LINES if name.startswith("migrator.phases.") else MAX_LINES
        assert lines <= limit, f"{path.relative_to(PACKAGE.parent)} has {lines} lines (limit {limit})"


def test_imports_only_point_down() -> None:
    """No module imports a higher layer: engines, SQL generators and state never import a phase."""
    for name, deps in _graph().items():
        for dep in deps:
            if dep.startswith("migrator.cli") and name.startswith("migrator.cli"):
                continue
            assert _layer(dep) <= _layer(name), f"{name} (layer {_layer(name)}) imports {dep} (layer {_layer(dep)})"


def test_import_graph_has_no_cycle() -> None:
    """The module import graph (lazy imports included) is acyclic."""
    graph = _graph()
    # Package __init__ modules import their children by definition; only arrows between real modules count.
    edges = {
        m: {d for d in deps if not m.startswith(d + ".") and not d.startswith(m + ".")} for m, deps in graph.items()
    }
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(node) :], node]))
        if node in done:
            return
        for dep in sorted(edges.get(node, ())):
            visit(dep, [*path, node])
        done.add(node)

    for module in sorted(edges):
        visit(module, [])


def test_rich_only_in_console() -> None:
    """Only migrator/console.py imports rich."""
    for name, path in _modules().items():
        if name == "migrator.console":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "rich" for a in node.names), f"{name} imports rich"
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "rich", f"{name} imports rich"


_STATES = set(lifecycle.STATES)
# "legacy" is also the everyday name of the legacy table; in prose only the other state names count.
_PROSE_STATES = _STATES - {lifecycle.START}


def _state_sequences(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            names = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in _STATES]
            if len(names) >= 2:
                found.append(f"line {node.lineno}: {names}")
        elif isinstance(node, ast.Dict):
            names = [k.value for k in node.keys if isinstance(k, ast.Constant) and k.value in _STATES]
            if len(names) >= 2:
                found.append(f"line {node.lineno}: dict keyed by {names}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            words = set(re.findall(r"\b[a-z_]+\b", node.value)) & _PROSE_STATES
            if len(words) >= 3:
                found.append(f"line {node.lineno}: text naming {sorted(words)}")
    return found


def test_lifecycle_order_is_written_once() -> None:
    """No module but lifecycle.py spells a sequence of states (a collection of two or more, or prose naming three)."""
    offenders = {
        name: seqs
        for name, path in _modules().items()
        if name != "migrator.lifecycle" and (seqs := _state_sequences(path))
    }
    assert not offenders, f"state sequences outside migrator/lifecycle.py: {offenders}"


def test_state_sequence_detector_catches_a_sequence(tmp_path: Path) -> None:
    """The detector above fails on a tuple of states and on an arrow chain (so the test above can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text('ORDER = ("legacy", "dual_write")\n"""backfilled -> validated -> read_new"""\n')
    assert len(_state_sequences(bad)) == 2


# Each rule's one home, and text that would mean a second copy of it somewhere else.
RULE_HOMES = {
    "per-transaction settings": ("migrator/engine/session.py", r"set_config\([^)]*true\)"),
    "on_missing default": ("migrator/sqlgen/rules.py", r"coalesce\(\{\}, \{\}::\{\}\)|raw\(\"coalesce\(\"\)"),
    "JSON encoding": ("migrator/jsonenc.py", r"json\.dumps\("),
    "connection-loss survival": ("migrator/engine/retry.py", r"def survive_connection_loss"),
    "chunk sizing": ("migrator/engine/chunking.py", r"class ChunkSizer|class RateLimiter"),
    "object names": ("migrator/sqlgen/names.py", r"def object_name|def archive_name|def function_name"),
}


@pytest.mark.parametrize("rule", sorted(RULE_HOMES))
def test_each_rule_is_written_once(rule: str) -> None:
    """A domain rule's code appears in its one module and nowhere else under migrator/."""
    home, pattern = RULE_HOMES[rule]
    root = PACKAGE.parent
    elsewhere = [
        str(p.relative_to(root))
        for p in PACKAGE.rglob("*.py")
        if str(p.relative_to(root)) != home and re.search(pattern, p.read_text())
    ]
    assert re.search(pattern, (root / home).read_text()), f"{rule}: {home} no longer holds it"
    assert not elsewhere, f"{rule} is written again in {elsewhere} (its home is {home})"


def test_old_duplicates_are_gone() -> None:
    """The duplicated helpers the redesign removed are not back (backfill's own rejection rule, db's unused
    timeout helpers, a second JSON default, the dead Spec/State helpers)."""
    gone = [
        r"def _invalid_expr",
        r"def _rejections",
        r"def _filled",
        r"def set_local_timeouts",
        r"def _default\(",
        r"def column_type",
        r"def reads_split\(self\) -> bool:\n        return self\.state",
    ]
    text = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    for pattern in gone:
        hits = [str(p.relative_to(PACKAGE.parent)) for p, t in text.items() if re.search(pattern, t)]
        assert not hits, f"{pattern!r} is back in {hits}"
