"""`migrator report`: the seed's expectations measured on the user's own data, from `backfilled` on (both sides
hold every row): storage per side (heap, TOAST, each index), the seed's query set timed on both schemas (median of
N runs of EXPLAIN (ANALYZE, BUFFERS)), and each expectation next to the measured figure with a verdict.

Read-only and safe on a primary: sizes come from the catalog (no scan), every query runs in a READ ONLY
transaction under SET LOCAL statement_timeout and lock_timeout, listings and batches are LIMITed, and the owner
whose projects are listed is one sampled row's.
"""

from __future__ import annotations

import html
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from migrator import lifecycle, state
from migrator.db import Database
from migrator.spec import Spec
from migrator.sqlgen import names
from migrator.sqlgen.compose import as_text, ident, join, literal

__all__ = ["Report", "measure"]

# States where both sides hold every row and the legacy table is still the live one.
MEASURABLE = tuple(s.state for s in lifecycle.STAGES if s.split_complete and not s.archived)
# The seed document's claims, as relative changes split vs legacy (negative: smaller / faster).
EXPECTED_STORAGE = (-25.0, -15.0)
EXPECTED_QUERY = (-40.0, -20.0)
LISTING_LIMIT = 100
BATCH = 1000
DRAFT_AGE = "24 hours"


@dataclass
class Relation:
    name: str
    rows: int
    heap: int
    toast: int
    indexes: dict[str, int]
    total: int


@dataclass
class Side:
    relations: list[Relation]

    @property
    def heap(self) -> int:
        return sum(r.heap for r in self.relations)

    @property
    def toast(self) -> int:
        return sum(r.toast for r in self.relations)

    @property
    def indexes(self) -> int:
        return sum(sum(r.indexes.values()) for r in self.relations)

    @property
    def total(self) -> int:
        return sum(r.total for r in self.relations)

    def as_dict(self) -> dict[str, Any]:
        return {
            "heap": self.heap,
            "toast": self.toast,
            "indexes": self.indexes,
            "total": self.total,
            "relations": [asdict(r) for r in self.relations],
        }


@dataclass
class Timing:
    median_ms: float
    runs_ms: list[float]
    statements: int  # the application's round trips for this read
    shared_hit: int
    shared_read: int
    scans: list[str]  # "Seq Scan on core_project", "Index Scan using … on projects"


@dataclass
class QueryResult:
    name: str
    description: str
    legacy: Timing
    split: Timing

    @property
    def change_pct(self) -> float:
        return _pct(self.split.median_ms, self.legacy.median_ms)


@dataclass
class Expectation:
    claim: str
    expected: str
    measured: str
    verdict: str  # "met", "partly met", "not met"


@dataclass
class Report:
    migration: str
    state: str
    runs: int
    legacy: Side
    split: Side
    queries: list[QueryResult] = field(default_factory=list)
    expectations: list[Expectation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "migration": self.migration,
            "state": self.state,
            "runs": self.runs,
            "storage": {
                "legacy": self.legacy.as_dict(),
                "split": self.split.as_dict(),
                "change_pct": round(_pct(self.split.total, self.legacy.total), 1),
            },
            "queries": [
                {**asdict(q), "change_pct": round(q.change_pct, 1)}
                for q in self.queries  # asdict keeps the Timing fields
            ],
            "expectations": [asdict(e) for e in self.expectations],
            "notes": self.notes,
        }


def _pct(new: float, old: float) -> float:
    return (new - old) / old * 100 if old else 0.0


_RELATION = """
SELECT c.reltuples::bigint, pg_catalog.pg_relation_size(c.oid),
       coalesce(pg_catalog.pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0),
       pg_catalog.pg_total_relation_size(c.oid)
  FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass(%s)
"""
_INDEXES = """
SELECT ic.relname::text, pg_catalog.pg_relation_size(i.indexrelid)
  FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
 WHERE i.indrelid = pg_catalog.to_regclass(%s) ORDER BY 1
"""


def _relation(conn: psycopg.Connection[Any], table: sql.Identifier, label: str) -> Relation:
    qualified = as_text(table)
    row = conn.execute(_RELATION, [qualified]).fetchone()
    assert row is not None  # the state guarantees the table exists
    indexes = {str(n): int(s) for n, s in conn.execute(_INDEXES, [qualified])}
    return Relation(label, max(int(row[0]), 0), int(row[1]), int(row[2]), indexes, int(row[3]))


def storage(conn: psycopg.Connection[Any], spec: Spec) -> tuple[Side, Side]:
    legacy = Side([_relation(conn, names.source(spec), spec.source.table)])
    split = Side([_relation(conn, names.split(spec, t), t) for t in spec.split_tables()])
    return legacy, split


# -- the seed's query set -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    legacy: list[sql.Composable]
    split: list[sql.Composable]


def _draft_index(spec: Spec) -> tuple[str, str] | None:
    """(flag column, time column) of a partial base index `time WHERE flag = true` (the seed's cleanup index)."""
    for ix in spec.indexes:
        if ix.table == spec.base.table and ix.where and len(ix.columns) == 1 and list(ix.where.values()) == [True]:
            return next(iter(ix.where)), ix.columns[0]
    return None


def queries(spec: Spec, owner: Any, owner_ids: list[Any]) -> list[Query]:
    """The seed's reads on both schemas: count by type, the first variant's listing, an owner's projects with
    meta prefetched (two round trips on the split side, as Django's prefetch_related), the drafts batch."""
    legacy, base = names.source(spec), names.split(spec, spec.base.table)
    pk, link, disc = ident(spec.pk), ident(spec.base.link_column), ident(spec.source.discriminator)
    v0 = spec.variants[0]
    when = literal(v0.when)
    child = names.split(spec, v0.table)
    out = [
        Query(
            "count_by_type",
            f"count {v0.when} projects (the seed's manager: base joined to {v0.table})",
            [sql.SQL("SELECT count(*) FROM {l} WHERE {d} = {w}").format(l=legacy, d=disc, w=when)],
            [
                sql.SQL("SELECT count(*) FROM {b} b JOIN {c} v ON v.{link} = b.{pk} WHERE b.{d} = {w}").format(
                    b=base, c=child, link=link, pk=pk, d=disc, w=when
                )
            ],
        ),
        Query(
            f"{v0.table}_listing",
            f"{v0.when} listing with its own fields, first {LISTING_LIMIT} by key",
            [
                sql.SQL("SELECT * FROM {l} WHERE {d} = {w} ORDER BY {pk} LIMIT {n}").format(
                    l=legacy, d=disc, w=when, pk=pk, n=literal(LISTING_LIMIT)
                )
            ],
            [
                sql.SQL(
                    "SELECT b.*, v.* FROM {b} b JOIN {c} v ON v.{link} = b.{pk}"
                    " WHERE b.{d} = {w} ORDER BY b.{pk} LIMIT {n}"
                ).format(b=base, c=child, link=link, pk=pk, d=disc, w=when, n=literal(LISTING_LIMIT))
            ],
        ),
    ]
    if spec.base.foreign_keys:
        owner_col = ident(spec.base.foreign_keys[0].column)
        joins = join(
            [
                sql.SQL("LEFT JOIN {c} AS {a} ON {a}.{link} = b.{pk}").format(
                    c=names.split(spec, v.table), a=ident(f"v{i}"), link=link, pk=pk
                )
                for i, v in enumerate(spec.variants)
            ],
            " ",
        )
        split_reads: list[sql.Composable] = [
            sql.SQL("SELECT * FROM {b} b {joins} WHERE b.{o} = {owner}").format(
                b=base, joins=joins, o=owner_col, owner=literal(owner)
            )
        ]
        if spec.meta:
            split_reads.append(
                sql.SQL("SELECT * FROM {m} WHERE {link} = ANY({ids})").format(
                    m=names.split(spec, spec.meta.table), link=link, ids=literal(owner_ids)
                )
            )
        out.append(
            Query(
                "owner_projects",
                "one owner's projects with variant fields and meta prefetched",
                [sql.SQL("SELECT * FROM {l} WHERE {o} = {owner}").format(l=legacy, o=owner_col, owner=literal(owner))],
                split_reads,
            )
        )
    drafts = _draft_index(spec)
    if drafts:
        flag, created = ident(drafts[0]), ident(drafts[1])
        batch = sql.SQL("SELECT {pk} FROM {t} WHERE {f} = true AND {c} < now() - interval {age} ORDER BY {c} LIMIT {n}")
        out.append(
            Query(
                "abandoned_drafts",
                f"one cleanup batch: {BATCH} drafts older than {DRAFT_AGE}, oldest first",
                [batch.format(pk=pk, t=legacy, f=flag, c=created, age=literal(DRAFT_AGE), n=literal(BATCH))],
                [batch.format(pk=pk, t=base, f=flag, c=created, age=literal(DRAFT_AGE), n=literal(BATCH))],
            )
        )
    return out


def _scans(plan: dict[str, Any]) -> list[str]:
    out = []
    node = plan.get("Node Type", "")
    if "Scan" in node and ("Relation Name" in plan or "Index Name" in plan):
        using = f" using {plan['Index Name']}" if "Index Name" in plan else ""
        on = f" on {plan['Relation Name']}" if "Relation Name" in plan else ""  # a bitmap index scan names no table
        out.append(f"{node}{using}{on}")
    for sub in plan.get("Plans", []):
        out.extend(_scans(sub))
    return out


def _explain(conn: psycopg.Connection[Any], statement: sql.Composable) -> dict[str, Any]:
    row = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}").format(statement)).fetchone()
    assert row is not None
    doc = row[0][0] if isinstance(row[0], list) else row[0]
    return dict(doc)


def time_side(conn: psycopg.Connection[Any], statements: list[sql.Composable], runs: int) -> Timing:
    """One warm-up, then `runs` measured runs; per run the sum of planning and execution of every statement."""
    for s in statements:
        _explain(conn, s)
    totals: list[float] = []
    docs: list[list[dict[str, Any]]] = []
    for _ in range(runs):
        run = [_explain(conn, s) for s in statements]
        docs.append(run)
        totals.append(sum(float(d.get("Planning Time", 0)) + float(d.get("Execution Time", 0)) for d in run))
    median = statistics.median(totals)
    closest = min(range(runs), key=lambda i: abs(totals[i] - median))
    chosen = docs[closest]
    return Timing(
        median_ms=round(median, 3),
        runs_ms=[round(t, 3) for t in totals],
        statements=len(statements),
        shared_hit=sum(int(d["Plan"].get("Shared Hit Blocks", 0)) for d in chosen),
        shared_read=sum(int(d["Plan"].get("Shared Read Blocks", 0)) for d in chosen),
        scans=[scan for d in chosen for scan in _scans(d["Plan"])],
    )


def _sample_owner(conn: psycopg.Connection[Any], spec: Spec) -> tuple[Any, list[Any]]:
    """One owner: of a row from a repeatable 1% page sample (the first row when the table is too small)."""
    col, legacy, base = ident(spec.base.foreign_keys[0].column), names.source(spec), names.split(spec, spec.base.table)
    row = conn.execute(
        sql.SQL("SELECT {c} FROM {t} TABLESAMPLE SYSTEM (1) REPEATABLE (42) LIMIT 1").format(c=col, t=legacy)
    ).fetchone()
    if row is None:
        row = conn.execute(
            sql.SQL("SELECT {c} FROM {t} ORDER BY {pk} LIMIT 1").format(c=col, t=legacy, pk=ident(spec.pk))
        ).fetchone()
    owner = row[0] if row else None
    ids = [
        r[0]
        for r in conn.execute(
            sql.SQL("SELECT {pk} FROM {b} WHERE {c} = %s").format(pk=ident(spec.pk), b=base, c=col), [owner]
        )
    ]
    return owner, ids


def _verdict(measured: float, expected: tuple[float, float]) -> str:
    if measured <= expected[1]:
        return "met"
    return "partly met" if measured < 0 else "not met"


def _range(expected: tuple[float, float], what: str) -> str:
    return f"{expected[0]:+.0f}..{expected[1]:+.0f}% {what}"


def expectations(rep: Report) -> list[Expectation]:
    """Each of the seed's claims next to what was measured."""
    storage_pct = _pct(rep.split.total, rep.legacy.total)
    data_pct = _pct(rep.split.heap + rep.split.toast, rep.legacy.heap + rep.legacy.toast)
    out = [
        Expectation(
            "storage",
            _range(EXPECTED_STORAGE, "storage"),
            f"{storage_pct:+.1f}% in total ({data_pct:+.1f}% heap and TOAST without indexes)",
            _verdict(storage_pct, EXPECTED_STORAGE),
        )
    ]
    for q in rep.queries:
        if q.name == "abandoned_drafts":
            continue
        out.append(
            Expectation(
                f"query {q.name}",
                _range(EXPECTED_QUERY, "time"),
                f"{q.change_pct:+.1f}% ({q.legacy.median_ms:.2f} → {q.split.median_ms:.2f} ms median"
                f", {q.legacy.statements} → {q.split.statements} round trips)",
                _verdict(q.change_pct, EXPECTED_QUERY),
            )
        )
    timed = [q for q in rep.queries if q.name != "abandoned_drafts" and q.legacy.median_ms > 0]
    if timed:
        ratio = statistics.geometric_mean(
            [q.split.median_ms / q.legacy.median_ms for q in timed if q.split.median_ms > 0]
        )
        overall = (ratio - 1) * 100
        out.append(
            Expectation(
                "queries overall (geometric mean)",
                _range(EXPECTED_QUERY, "time"),
                f"{overall:+.1f}%",
                _verdict(overall, EXPECTED_QUERY),
            )
        )
    drafts = next((q for q in rep.queries if q.name == "abandoned_drafts"), None)
    if drafts is not None:
        seq = [s for s in drafts.split.scans if s.startswith("Seq Scan")]
        how = "a sequential scan" if seq else "an index range scan"
        legacy_seq = any(s.startswith("Seq Scan") for s in drafts.legacy.scans)
        out.append(
            Expectation(
                "draft cleanup",
                "O(1) per batch (independent of table size)",
                f"split: {how} ({drafts.split.median_ms:.2f} ms per batch of {BATCH}); legacy: "
                f"{'a sequential scan' if legacy_seq else 'an index scan'}"
                f" ({drafts.legacy.median_ms:.2f} ms)",
                "not met" if seq else "met",
            )
        )
    return out


_NEVER_ANALYZED = """
SELECT coalesce(s.last_analyze, s.last_autoanalyze) IS NULL
  FROM pg_catalog.pg_stat_all_tables s WHERE s.relid = pg_catalog.to_regclass(%s)
"""


def _tables(spec: Spec) -> list[sql.Identifier]:
    return [names.source(spec), *(names.split(spec, t) for t in spec.split_tables())]


def _never_analyzed(conn: psycopg.Connection[Any], spec: Spec) -> list[str]:
    out = []
    for table in _tables(spec):
        row = conn.execute(_NEVER_ANALYZED, [as_text(table)]).fetchone()
        if row is not None and row[0]:
            out.append(as_text(table))
    return out


def measure(
    db: Database,
    spec: Spec,
    *,
    runs: int = 5,
    statement_timeout_ms: int = 30_000,
    only: list[str] | None = None,
    analyze: bool = False,
) -> Report:
    """Measure storage and the query set (read-only unless `analyze`, which first refreshes the planner's
    statistics of both sides). WrongState before both sides hold every row."""
    with db.connect(autocommit=True) as conn:
        current = state.read(conn, spec)
        state.require(current, MEASURABLE, "report")
        if analyze:
            conn.execute(sql.SQL("ANALYZE {}").format(join(_tables(spec))))
        stale = _never_analyzed(conn, spec)
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(literal(statement_timeout_ms)))
            conn.execute("SET LOCAL lock_timeout = 1000")
            legacy, split = storage(conn, spec)
            rep = Report(spec.migration_name, current.state, runs, legacy, split)
            owner, ids = _sample_owner(conn, spec) if spec.base.foreign_keys else (None, [])
            for q in queries(spec, owner, ids):
                if only and q.name not in only:
                    continue
                rep.queries.append(
                    QueryResult(q.name, q.description, time_side(conn, q.legacy, runs), time_side(conn, q.split, runs))
                )
    rep.expectations = expectations(rep)
    rep.notes.append(
        f"timings: median of {runs} runs after one warm-up, planning included, in one read-only transaction; "
        "sizes from the catalog (the legacy table may carry bloat a fresh copy does not)"
    )
    missing = rep.legacy.relations[0].rows - rep.split.relations[0].rows
    if missing > 0:
        rep.notes.append(
            f"the split side holds about {missing:,} fewer rows (quarantined or not yet copied, by the planner's "
            "estimates): its sizes are for those rows only"
        )
    if stale:
        rep.notes.append(
            f"never analyzed: {', '.join(stale)}; the planner guessed, so the plans (and times) may be poor "
            "— run ANALYZE on them, or `migrator report --analyze`"
        )
    return rep


# -- the HTML page --------------------------------------------------------------------------------------------
# Hand-written inline SVG: the page is one self-contained file that renders without scripts or network, and
# needs no plotting library (plotly's offline bundle alone is 3 MB; matplotlib would be a heavy dependency for
# a few bars). One small script only counts the drawn bars, so a headless browser can confirm the charts render.

_COLOURS = {"legacy": "#8c8c8c", "split": "#2f6fb0", "heap": "#2f6fb0", "toast": "#f0a030", "indexes": "#5aa05a"}
_VERDICT = {"met": "#2e7d32", "partly met": "#b26a00", "not met": "#c62828"}


def _bars(chart: str, rows: list[tuple[str, list[tuple[str, float]]]], unit: str) -> str:
    """Horizontal bars, each row a stack of (part, value); scaled to the largest row."""
    width, label_w, row_h = 640, 170, 28
    top = max((sum(v for _, v in parts) for _, parts in rows), default=0) or 1
    out = [f'<svg class="chart" data-chart="{chart}" width="{width + label_w + 90}" height="{len(rows) * row_h + 10}">']
    for i, (label, parts) in enumerate(rows):
        y = 5 + i * row_h
        out.append(f'<text x="0" y="{y + 17}">{html.escape(label)}</text>')
        x = float(label_w)
        for part, value in parts:
            w = value / top * width
            out.append(
                f'<rect class="bar" data-part="{part}" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h - 8}" '
                f'fill="{_COLOURS.get(part, "#777")}"><title>{html.escape(part)}: {value:,.2f} {unit}</title></rect>'
            )
            x += w
        total = sum(v for _, v in parts)
        out.append(f'<text x="{x + 6:.1f}" y="{y + 17}">{total:,.2f} {unit}</text>')
    out.append("</svg>")
    return "\n".join(out)


def render_html(details: dict[str, Any]) -> str:
    """A self-contained page: storage and query-time bar charts, the expectations with verdicts, the notes."""
    mb = 1024 * 1024
    st = details["storage"]
    storage_rows = [
        (side, [(part, st[side][part] / mb) for part in ("heap", "toast", "indexes")]) for side in ("legacy", "split")
    ]
    query_charts = "\n".join(
        f"<h3>{html.escape(q['name'])} <small>{html.escape(q['description'])} · {q['change_pct']:+.1f}%</small></h3>\n"
        + _bars(
            f"query-{q['name']}",
            [(side, [(side, q[side]["median_ms"])]) for side in ("legacy", "split")],
            "ms",
        )
        for q in details["queries"]
    )
    rows = "\n".join(
        f"<tr><td>{html.escape(e['claim'])}</td><td>{html.escape(e['expected'])}</td>"
        f"<td>{html.escape(e['measured'])}</td>"
        f'<td class="verdict" style="color:{_VERDICT.get(e["verdict"], "#000")}">{html.escape(e["verdict"])}</td></tr>'
        for e in details["expectations"]
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in details.get("notes", []))
    legend = " ".join(f'<span style="color:{_COLOURS[p]}">■</span> {p}' for p in ("heap", "toast", "indexes"))
    title = f"migrator report: {details['migration']} ({details['state']})"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
.verdict {{ font-weight: bold; }} svg text {{ font: 12px system-ui, sans-serif; fill: #222; }}
small {{ color: #666; font-weight: normal; }}
</style></head>
<body data-bars-rendered="0">
<h1>{html.escape(title)}</h1>
<h2>The seed's expectations</h2>
<table><tr><th>claim</th><th>expected</th><th>measured</th><th>verdict</th></tr>
{rows}
</table>
<h2>Storage (MB) · {st["change_pct"]:+.1f}%</h2>
<p>{legend}</p>
{_bars("storage", storage_rows, "MB")}
<h2>Queries (median of {details["runs"]} runs, ms)</h2>
{query_charts}
<ul>{notes}</ul>
<script>
document.body.dataset.barsRendered = String(
  Array.from(document.querySelectorAll("svg.chart rect.bar")).filter(r => r.getBoundingClientRect().width > 0).length
);
</script>
</body></html>
"""
