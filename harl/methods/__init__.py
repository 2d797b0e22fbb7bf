"""Methods: one file per method on :class:`BaseMethod`; registered in :data:`METHODS`."""

from harl.methods.base import BaseMethod, BaseMomentumMethod
from harl.methods.registry import METHODS
from harl.methods import byol, mocov2plus, simclr  # noqa: F401,E402  (register)

__all__ = ["METHODS", "BaseMethod", "BaseMomentumMethod"]
