"""Offline foreground masks: generators, the sharded resumable runner, import and evaluation.

Modules (imported lazily, so ``import harl.masks.<x>`` stays cheap):

- :mod:`harl.masks.io` — walking image trees, reading images/masks (:mod:`harl.utils.image_io`),
  PNG encoding, sharding;
- :mod:`harl.masks.registry` — ``GENERATORS`` (name → :class:`~harl.masks.registry.GeneratorSpec`);
- :mod:`harl.masks.felzenszwalb` — the graph-based heuristic generator (docs/masks.md);
- :mod:`harl.masks.saliency`, :mod:`harl.masks.saliency_model`, :mod:`harl.masks.saliency_train` —
  the deep saliency generator (docs/masks.md) and its label-free head training;
- :mod:`harl.masks.importer` — existing masks into the canonical tree;
- :mod:`harl.masks.runner` — walk → shard → skip done → workers → PNGs → manifest/failures/summary
  (its parts: :mod:`harl.masks.jobs`, :mod:`harl.masks.pool`, :mod:`harl.masks.journal`,
  :mod:`harl.masks.summary`);
- :mod:`harl.masks.evaluate` — IoU / precision / recall between two mask trees;
- :mod:`harl.masks.ops` — small pure mask operations.

The command line is ``harl-masks`` (:mod:`harl.cli.masks`); see ``docs/masks.md``.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "GENERATORS": "harl.masks.registry",
    "GeneratorSpec": "harl.masks.registry",
    "FelzenszwalbParams": "harl.masks.felzenszwalb",
    "felzenszwalb_mask": "harl.masks.felzenszwalb",
    "SaliencyParams": "harl.masks.saliency",
    "ImageGeneratorJob": "harl.masks.runner",
    "RunOptions": "harl.masks.runner",
    "run_job": "harl.masks.runner",
    "merge_manifests": "harl.masks.runner",
    "ImportJob": "harl.masks.importer",
    "evaluate_trees": "harl.masks.evaluate",
}


def __getattr__(name):
    if name in _LAZY:
        if name == "GENERATORS":
            from harl.masks.registry import load_builtin_generators  # lazy table: see the docstring

            load_builtin_generators()
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harl.masks' has no attribute '{name}'")


__all__ = sorted(_LAZY)
