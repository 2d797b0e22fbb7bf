"""Methods: one file per method on :class:`BaseMethod`; registered in :data:`METHODS`.

Every module of this package is imported here, so a new method file registers itself with
``@METHODS.register("name")`` and needs no other edit.
"""

import importlib
import pkgutil

from harl.methods.base import BaseMethod, BaseMomentumMethod
from harl.methods.registry import METHODS

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "BaseMethod", "BaseMomentumMethod"]
