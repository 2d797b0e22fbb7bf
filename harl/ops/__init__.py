"""In-model tensor operations: pure functions of tensors, no module state, shapes in docstrings.

What a method computes inside its training step that is neither a network nor a loss lives here
(losses are :mod:`harl.losses`, networks :mod:`harl.backbones` / :mod:`harl.heads`):

- :mod:`harl.ops.mask_grid` — a full-resolution mask → the feature grid (``mask_to_grid``), masked
  pooling (``masked_mean_pool``, ``gap_masked_pool``, ``pixel_shuffle_pool``), cell centres and
  spatial correspondence of two views (HARL, HAPiCL; docs/augmentation.md);
- :mod:`harl.ops.filters` — Gaussian blur / high-pass of image batches (SGM's ``hp`` views and
  ``blur`` fill; ``HighPass`` is the same as a parameter-free module for transform pipelines);
- :mod:`harl.ops.sgm_cells` — SGM's cell geometry, saliency rules, cell counts and draws;
- :mod:`harl.ops.sgm_masking` — SGM's noise, focal windows, fills and the whole masking operator;
- :mod:`harl.ops.knn` — weighted kNN scores and top-k accuracy (the online kNN monitor and the
  offline kNN probe).

This package imports only torch / numpy and the lowest harl layers (:mod:`harl.registry`), so
every other package may use it. Modules are imported on demand (``import harl.ops`` loads nothing).
"""
