"""``harl-pretrain``: solo-learn's ``main_pretrain.py`` for harl.

    harl-pretrain --config-path scripts/pretrain/cifar --config-name byol.yaml [key=value ...]
    harl-pretrain scripts/pretrain/cifar/byol.yaml max_epochs=10
"""

from __future__ import annotations

import sys

from harl.cli.common import load_config, run_cli
from harl.config import parse_cfg


def _pretrain(argv) -> None:
    from harl.train import pretrain  # lazy: keeps the command's start-up light

    cfg = parse_cfg(load_config(argv, "harl-pretrain", "Self-supervised pretraining from a solo-learn-style YAML config."))
    result = pretrain(cfg)
    print(f"run folder: {result.run_dir}")
    if result.last_checkpoint:
        print(f"checkpoint: {result.last_checkpoint}")


def main(argv=None) -> int:
    return run_cli(_pretrain, argv)


if __name__ == "__main__":
    sys.exit(main())
