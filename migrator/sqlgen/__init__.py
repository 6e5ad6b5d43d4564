"""SQL generators: everything that turns a spec into SQL text, with no database and no execution.

compose (the quoting helpers and templates), names (every object's name), rules (each domain rule once),
views, triggers and ddl (the shared DDL actions).
"""
