"""Sample photos that ship with the package, so the first command works offline.

``python -m faceanon_core.samples grace_hopper`` prints the path of the photo.
grace_hopper.jpg: Rear Admiral Grace Hopper, U.S. Navy photograph (public domain),
the copy that matplotlib also ships.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

SAMPLES = {"grace_hopper": "grace_hopper.jpg"}


def sample_path(name: str = "grace_hopper") -> Path:
    if name not in SAMPLES:
        raise KeyError(f"no sample called {name!r}; choose one of {sorted(SAMPLES)}")
    return Path(str(resources.files("faceanon_core").joinpath("data/samples", SAMPLES[name])))


if __name__ == "__main__":
    try:
        print(sample_path(*sys.argv[1:2]))
    except KeyError as exc:
        print(f"faceanon samples: {exc.args[0]}", file=sys.stderr)
        sys.exit(2)
