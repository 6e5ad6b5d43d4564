"""`migrator infer-spec`: propose a spec TOML from the legacy table's catalog and a sample (migrator.infer)."""

from __future__ import annotations

from pathlib import Path

import click

from migrator import console
from migrator.cli.app import App, cli, defaulted, done, examples, pass_app


@cli.command("infer-spec")
@click.option("--table", required=True, help="The legacy table, SCHEMA.TABLE (public when unqualified).")
@click.option("--discriminator", required=True, help="The column whose value says which variant a row is.")
@defaulted("--sample", click.IntRange(min=1), 10_000, "Rows (the first by key) whose NULL pattern suggests the split.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the spec to this file instead of printing it.",
)
@examples(
    "migrator infer-spec --table shop.orders --discriminator kind > orders.toml",
    "migrator infer-spec --table core_project --discriminator project_type --output projects.toml",
    "migrator --spec orders.toml plan expand",
)
@pass_app
def infer_spec(app: App, table: str, discriminator: str, sample: int, output: Path | None) -> None:
    """Propose a spec from the legacy table: columns with their exact types (enums, domains, arrays,
    schema-qualified), the primary key, generated columns with their expression, foreign keys out of and into the
    table from the catalog; the split of the other columns by their NULL pattern per discriminator value in a
    sample. Writes nothing to the database; review the result before `migrator expand`."""
    from migrator import infer, spec_check

    with app.db.connect(autocommit=True) as conn:
        inferred = infer.infer_spec(conn, table, discriminator, sample)
        spec_check.check(conn, inferred.spec, f"<inferred spec for {table}>")
    if output is not None:
        output.write_text(inferred.text)
    details = {
        "table": table,
        "discriminator": discriminator,
        "sampled_rows": inferred.sampled_rows,
        "notes": inferred.notes,
        "spec": inferred.text,
        "output": str(output) if output is not None else None,
    }
    done(app, f"spec written to {output}" if output is not None else None, details=details, changed=False)
    if output is None and not app.json:
        console.emit(inferred.text.rstrip("\n"))
    for note in inferred.notes if not app.json else []:
        console.warn(note)
