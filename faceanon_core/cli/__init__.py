"""The ``faceanon`` command: :mod:`.main` builds the parser from one module per subcommand group
(:mod:`.anonymize`, :mod:`.faces`, :mod:`.evaluate`, :mod:`.models`, :mod:`.queue`), which share
:mod:`.common` (the exit codes, the option checks, planning). Nothing else in the package imports this room.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
