"""Loss functions: pure tensor functions with shapes in their docstrings."""

from harl.losses.byol import byol_loss
from harl.losses.hapicl import pixel_contrastive_loss, pixel_contrastive_loss_and_stats, pixel_pair_masks
from harl.losses.harl import (alpha_schedule, beta_schedule, harl_branch_loss, harl_loss_weights, harl_total_loss,
                              pool_regions, region_validity, weighted_byol_loss)
from harl.losses.moco import moco_logits, moco_loss
from harl.losses.simclr import nt_xent_loss

__all__ = ["byol_loss", "moco_logits", "moco_loss", "nt_xent_loss",
           "pool_regions", "region_validity", "weighted_byol_loss", "harl_branch_loss", "harl_loss_weights",
           "harl_total_loss", "alpha_schedule", "beta_schedule",
           "pixel_pair_masks", "pixel_contrastive_loss", "pixel_contrastive_loss_and_stats"]
