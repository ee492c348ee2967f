"""The ``faceanon`` command: :mod:`.main` builds the parser from one module per subcommand group
(:mod:`.anonymize`, :mod:`.faces`, :mod:`.video`, :mod:`.evaluate`, :mod:`.models`, :mod:`.queue`), which share
:mod:`.errors` (CliError, exit codes), :mod:`.options` (argparse options and their checks), :mod:`.loading` (the
models: weights, pipeline, recognizer) and :mod:`.runs` (planning, locking, reporting a folder run).
Nothing else in the package imports this room.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
