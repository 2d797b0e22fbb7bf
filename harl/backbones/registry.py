"""Backbone registry: name → builder(**backbone.kwargs) returning an ``nn.Module``."""

from harl.registry import Registry

BACKBONES = Registry("backbone")
