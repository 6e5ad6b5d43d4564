"""One module per phase; each offers plan/apply/verify/rollback side by side (see base.Phase)."""
