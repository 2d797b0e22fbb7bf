"""Semi-supervised fine-tuning (docs/protocols.md): the whole backbone + a linear head on a labelled subset.

Protocol (BYOL / SimCLR; harl's reading of it, the papers leave details open): pick a seeded, class-balanced labelled subset of the
training split (1 %, 10 %, any fraction, k images per class, or a list file such as SimCLR's
ImageNet 1 % / 10 % lists) — :mod:`harl.eval.subsets`; fine-tune backbone + linear head with SGD,
Nesterov momentum 0.9, no weight decay, a short cosine schedule stepped per optimizer step
(≈30 epochs for 1 %, 20 for 10 %), RandomResizedCrop + flip; choose the learning rate (and
optionally the weight decay) on a class-stratified held-out part of the labelled subset; train
again on the whole subset with the chosen values and report top-1 / top-5 on the validation split.

Everything a run needs to be reproduced lands in its run folder
``<checkpoint.dir>/finetune/<name>-<digest>/`` (the digest is of the config, so running the same
command again resumes the same folder):

- ``args.json``: the resolved config (+ the backbone architecture actually built);
- ``subset_train.txt`` (the labelled subset), ``subset_search_train.txt`` / ``subset_holdout.txt``
  (its split for the search): one relative path or dataset index per line;
- ``stages/<stage>/{state.pt, metrics.csv, result.json}``: one stage per search point
  (``search-lr=…-wd=…``) and the ``final`` one; ``state.pt`` is rewritten atomically each epoch so
  a killed run resumes at the last finished epoch, and a stage with ``result.json`` is skipped;
- ``metrics.csv`` (all stages, per epoch), ``finetuned.pth`` (``backbone.*`` + ``classifier.*``)
  and ``results.json`` (``mode: finetune``, ``top1``, ``top5``, …; read by ``harl-report``).

Modules: :mod:`~harl.eval.finetune.schema` (config schema, value checks, digest),
:mod:`~harl.eval.finetune.model` (backbone + linear head), :mod:`~harl.eval.finetune.train`
(training and evaluation loops), :mod:`~harl.eval.finetune.files` (run-folder files, pretraining
facts), :mod:`~harl.eval.finetune.runner` (the protocol from a config); their public names are
importable from ``harl.eval.finetune`` as before.
"""

from __future__ import annotations

from harl.eval.finetune.files import _pretrain_facts, stage_name, subset_label  # noqa: F401
from harl.eval.finetune.model import FinetuneModel
from harl.eval.finetune.runner import FinetuneRunner, run_finetune
from harl.eval.finetune.schema import (  # noqa: F401
    DEFAULT_LR_GRID,
    FINETUNE_SCHEMA,
    FINETUNE_VALUES,
    PRECISIONS,
    config_digest,
    validate_finetune_cfg,
)
from harl.eval.finetune.train import cosine_lr, evaluate_classifier, train_classifier
from harl.utils.device import resolve_device  # noqa: F401  (the one resolver; re-exported)

__all__ = ["FINETUNE_SCHEMA", "DEFAULT_LR_GRID", "validate_finetune_cfg", "config_digest", "FinetuneModel",
           "train_classifier", "evaluate_classifier", "cosine_lr", "FinetuneRunner", "run_finetune", "subset_label"]
