"""The `migrator` command: parse options, call one library function, render the result. No SQL here.

app.py holds the group, the global options and the error handler; the commands live in phase_commands.py and
tool_commands.py (importing them registers them on the group).
"""

from migrator.cli import cleanup_command as cleanup_command  # registers `migrator cleanup-drafts`
from migrator.cli import doctor_command as doctor_command  # importing it registers `migrator doctor`
from migrator.cli import finalize_command as finalize_command  # registers `migrator finalize`
from migrator.cli import infer_command as infer_command  # registers `migrator infer-spec`
from migrator.cli import models_command as models_command  # registers `migrator models`
from migrator.cli import phase_commands, tool_commands
from migrator.cli import report_command as report_command  # registers `migrator report`
from migrator.cli.app import cli, main

__all__ = ["cli", "main", "phase_commands", "tool_commands"]
