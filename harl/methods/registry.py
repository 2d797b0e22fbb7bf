"""The ``METHODS`` registry: method name → LightningModule class.

The registry object lives in :mod:`harl.registry` (so that :mod:`harl.config` can look names up
without importing this package); it imports :mod:`harl.methods` on its first lookup.
"""

from harl.registry import METHODS

__all__ = ["METHODS"]
