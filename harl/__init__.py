"""harl: object-aware self-supervised visual pretraining on a solo-learn-compatible core."""

__version__ = "0.1.0"
