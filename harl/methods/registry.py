"""The ``METHODS`` registry: method name → LightningModule class."""

from harl.registry import Registry

METHODS = Registry("method")
