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
from typing import List, Sequence

from harl.cli.common import load_config, run_cli


def quote_overrides(argv: Sequence[str]) -> List[str]:
    """Quote override values that contain ``=`` (checkpoint names end in ``-ep=<e>.ckpt``), which
    Hydra's override grammar would otherwise reject: ``k=a-ep=9.ckpt`` → ``k='a-ep=9.ckpt'``.
    Values already quoted, and options (``--config-path`` ...), are left alone."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if (sep and not arg.startswith("-") and "=" in value and value[:1] not in ("'", '"')
                and "'" not in value):
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


def _linear(argv) -> None:
    from harl.eval.runner import evaluate

    argv = quote_overrides(sys.argv[1:] if argv is None else argv)
    cfg = load_config(argv, "harl-linear",
                      "Linear / kNN / dense evaluation of a pretrained backbone from a solo-learn-style YAML config.")
    results = evaluate(cfg)
    print(results["summary"])
    print(f"results: {results['results_path']}")


def main(argv=None) -> int:
    return run_cli(_linear, argv)


if __name__ == "__main__":
    sys.exit(main())
