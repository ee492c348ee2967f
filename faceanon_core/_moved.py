"""Old module paths of the flat 0.1 layout, kept importable for one release with a DeprecationWarning.

``import faceanon_core.pipeline`` (or ``from faceanon_core.redact import redact_image``) imports the
module's new home and binds it under the old name too, so both names give the same objects. One
table instead of a shim file per old module; remove it in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old dotted path -> new dotted path
MOVED = {
    "faceanon_core.pipeline": "faceanon_core.method.pipeline",
    "faceanon_core.states": "faceanon_core.method.states",
    "faceanon_core.attention": "faceanon_core.method.attention",
    "faceanon_core.loading": "faceanon_core.method.loading",
    "faceanon_core.redact": "faceanon_core.faces.redact",
    "faceanon_core.identity": "faceanon_core.privacy.identity",
    "faceanon_core.guard": "faceanon_core.privacy.guard",
    "faceanon_core.evaluate": "faceanon_core.privacy.evaluate",
    "faceanon_core.imageio": "faceanon_core.media.images",
    "faceanon_core.photos": "faceanon_core.media.plans",
    "faceanon_core.tiny_models": "faceanon_core.testing.tiny_models",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers only for the names in :data:`MOVED`; every other import is left to Python."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; the old path works until 0.3", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        """The new module is already executed."""


def install() -> None:
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
