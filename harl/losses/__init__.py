"""Loss functions: pure tensor functions with shapes in their docstrings."""

from harl.losses.barlow import barlow_twins_loss
from harl.losses.byol import byol_loss
from harl.losses.deepclusterv2 import deepclusterv2_loss, kmeans_cosine
from harl.losses.dino import dino_loss
from harl.losses.hapicl import pixel_contrastive_loss, pixel_contrastive_loss_and_stats, pixel_pair_masks
from harl.losses.harl import (alpha_schedule, beta_schedule, harl_branch_loss, harl_loss_weights, harl_total_loss,
                              pool_regions, region_validity, weighted_byol_loss)
from harl.losses.moco import moco_logits, moco_loss
from harl.losses.mocov3 import mocov3_loss
from harl.losses.nnclr import nearest_neighbour, nnclr_loss
from harl.losses.ressl import ressl_loss
from harl.losses.sgm import hard_negative_logits
from harl.losses.simclr import nt_xent_loss
from harl.losses.simsiam import simsiam_loss
from harl.losses.supcon import supcon_loss
from harl.losses.swav import sinkhorn_knopp, swav_loss
from harl.losses.vibcreg import vibcreg_loss, vibcreg_terms
from harl.losses.vicreg import vicreg_loss, vicreg_terms
from harl.losses.wmse import cholesky_whiten, wmse_loss

__all__ = ["barlow_twins_loss", "dino_loss", "mocov3_loss", "nearest_neighbour", "nnclr_loss", "ressl_loss", "simsiam_loss", "sinkhorn_knopp", "swav_loss",
           "vicreg_loss", "vicreg_terms", "cholesky_whiten", "wmse_loss", "vibcreg_loss", "vibcreg_terms",
           "supcon_loss", "deepclusterv2_loss", "kmeans_cosine", "byol_loss", "moco_logits", "moco_loss",
           "hard_negative_logits", "nt_xent_loss",
           "pool_regions", "region_validity", "weighted_byol_loss", "harl_branch_loss", "harl_loss_weights",
           "harl_total_loss", "alpha_schedule", "beta_schedule",
           "pixel_pair_masks", "pixel_contrastive_loss", "pixel_contrastive_loss_and_stats"]
