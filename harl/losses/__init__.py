"""Loss functions: pure tensor functions with shapes in their docstrings."""

from harl.losses.byol import byol_loss
from harl.losses.moco import moco_logits, moco_loss
from harl.losses.simclr import nt_xent_loss

__all__ = ["byol_loss", "moco_logits", "moco_loss", "nt_xent_loss"]
