"""The verifier: the row-level proof that the split tables hold exactly the legacy rows (DESIGN.md §Validation).

result (what a validation found), checks (the one registry of checks), queries (every statement, rendered from
the spec), runner (the chunked, threaded engine), reports (JUnit XML and JSON for CI). Nothing here imports a
phase: the validate phase, the guards and the rehearsal drive it from above.
"""
