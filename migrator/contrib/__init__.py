"""Integrations with application frameworks (each an optional extra: `pip install migrator[django]`)."""
