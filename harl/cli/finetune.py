"""``harl-finetune``: semi-supervised fine-tuning (backbone + linear head on a labelled subset).

    harl-finetune --config-path scripts/linear/imagenet --config-name finetune_1pct.yaml \\
        pretrained_feature_extractor=trained_models/harl/<version>/<name>-ep=999.ckpt
    harl-finetune scripts/linear/cifar/finetune_10pct.yaml pretrained_feature_extractor=... subset.seed=1

Keys are documented in ``docs/protocols.md`` (schema: :data:`harl.eval.finetune.FINETUNE_SCHEMA`).
Running the same command again resumes the same run folder.
"""

from __future__ import annotations

import sys

from harl.cli.common import load_config, run_cli


def _finetune(argv) -> None:
    from harl.eval.finetune import run_finetune  # lazy: keeps the command's start-up light

    cfg = load_config(argv, "harl-finetune",
                      "Fine-tune a pretrained backbone + linear head on a labelled subset (1 %, 10 %, k per class "
                      "or a list file); the learning rate is chosen on a held-out part of the subset.")
    res = run_finetune(cfg)
    print(f"run folder: {res['run_dir']}")
    print(f"labelled subset: {res['subset_label']} ({res['subset']['size']} images); lr {res['lr']:g} "
          f"({res['lr_source']}), weight decay {res['weight_decay']:g}")
    print(f"val top-1 {res['top1']:.2f}  top-5 {res['top5']:.2f}")


def main(argv=None) -> int:
    return run_cli(_finetune, argv)


if __name__ == "__main__":
    sys.exit(main())
