"""The copy engines: the forward copy of legacy rows into the split tables (the backfill) and the reverse copy that
refills the legacy table from the split tables (rollback from contracted). Phases drive them; they import no phase.
"""
