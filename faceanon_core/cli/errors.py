"""How a command fails: :class:`CliError` (one line on stderr) and the exit codes every subcommand shares."""

from __future__ import annotations

#: The exit codes of every subcommand (``faceanon --help`` and docs/cli.md print this table).
EXIT_OK = 0  # every input done
EXIT_FAILED = 1  # some inputs failed (named on stderr); the others are done
EXIT_USAGE = 2  # bad usage, or an input/output that cannot be used: found before any work, nothing written
EXIT_INTERRUPTED = 130  # Ctrl-C: finished outputs are kept, nothing half-written

EXIT_CODES_EPILOG = """exit codes (every subcommand):
  0    every input done
  1    some inputs failed (each named on stderr); the others are done
  2    bad usage, or an input/output that cannot be used: found before any work, nothing written
  130  interrupted (Ctrl-C): finished outputs are kept, nothing half-written
errors are one line on stderr: "faceanon SUBCOMMAND: error: ..."
"""


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2 (``EXIT_USAGE``) unless ``code`` says otherwise."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code
