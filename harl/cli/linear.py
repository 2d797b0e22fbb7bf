"""``harl-linear``: solo-learn's ``main_linear.py`` (and ``main_knn.py``) for harl.

    harl-linear --config-path scripts/linear/cifar --config-name byol.yaml \
        pretrained_feature_extractor=trained_models/byol/<version>/<name>-<version>-ep=999.ckpt
    harl-linear scripts/linear/fashion-scenes/byol.yaml pretrained_feature_extractor=... mode=knn
    harl-linear scripts/linear/fashion-scenes/dense.yaml pretrained_feature_extractor=...

Modes: ``linear`` (default; ``protocol=augmented`` as solo-learn, or ``protocol=cached``), ``knn``,
``dense``. Prints one summary line and the path of the run's ``results.json``.
"""

from __future__ import annotations

import sys

from harl.cli.common import load_config, run_cli


def _linear(argv) -> None:
    from harl.eval.runner import evaluate  # lazy: keeps the command's start-up light

    cfg = load_config(argv, "harl-linear",
                      "Linear / kNN / dense evaluation of a pretrained backbone from a solo-learn-style YAML config.")
    results = evaluate(cfg)
    print(results["summary"])
    print(f"results: {results['results_path']}")


def main(argv=None) -> int:
    return run_cli(_linear, argv)


if __name__ == "__main__":
    sys.exit(main())
