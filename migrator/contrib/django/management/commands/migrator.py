"""`python manage.py migrator [--database ALIAS] <command> [options…]`: any migrator command, on the database
Django uses (DSN from DATABASES) and with the spec of settings.MIGRATOR. `--dsn`/`--spec` given after it win."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from migrator.contrib.django import conf

# Django's own options, which manage.py has already acted on; they mean nothing to the migrator CLI.
_DJANGO_OPTIONS = ("--settings", "--pythonpath")


class Command(BaseCommand):  # type: ignore[misc]  # django ships no type hints
    help = "Run a migrator command on this project's database: manage.py migrator [--database ALIAS] status"

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--database", default=None, help="The DATABASES alias (default: MIGRATOR['database']).")
        parser.add_argument("cli_args", nargs=argparse.REMAINDER, help="The migrator command and its options.")

    def run_from_argv(self, argv: list[str]) -> None:
        # Parsed here rather than by argparse: everything after the alias belongs to migrator's own parser,
        # options before the command included (`migrator --json status`).
        args = _strip_django_options(argv[2:])
        database = None
        if args and args[0] == "--database":
            if len(args) < 2:
                raise CommandError("--database needs an alias")
            database, args = args[1], args[2:]
        elif args and args[0].startswith("--database="):
            database, args = args[0].split("=", 1)[1], args[1:]
        self.handle(*args, database=database)

    def handle(self, *cli_args: str, database: str | None = None, **options: Any) -> None:
        from migrator import cli

        args = list(cli_args) or list(options.get("cli_args") or [])
        cfg = conf.config()
        prefix = ["--dsn", conf.dsn(database or cfg.database)]
        if cfg.spec_path is not None:
            prefix += ["--spec", cfg.spec_path]
        cli.main([*prefix, *args])  # exits with the command's exit code, as the `migrator` script does


def _strip_django_options(args: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in _DJANGO_OPTIONS:
            skip = True
            continue
        if arg.startswith(tuple(f"{o}=" for o in _DJANGO_OPTIONS)):
            continue
        out.append(arg)
    return out
