"""``python -m training`` = ``faceanon-train``."""

import sys

from .cli import main

sys.exit(main())
