"""migrator: zero-downtime split of a wide PostgreSQL table into a normalized schema."""

__version__ = "0.1.0"
