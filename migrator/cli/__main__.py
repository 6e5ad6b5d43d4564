"""`python -m migrator.cli`: the same as the `migrator` console script."""

from migrator.cli.app import main

main()
