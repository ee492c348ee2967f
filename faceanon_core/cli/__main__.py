"""``python -m faceanon_core.cli``: the ``faceanon`` command without the console script."""

import sys

from .main import main

sys.exit(main())
