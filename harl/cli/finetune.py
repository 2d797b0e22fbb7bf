"""``harl-finetune``: semi-supervised fine-tuning (backbone + linear head on a labelled subset).

    harl-finetune --config-path scripts/linear/imagenet --config-name finetune_1pct.yaml \\
        pretrained_feature_extractor=trained_models/harl/<version>/<name>-ep=999.ckpt
    harl-finetune scripts/linear/cifar/finetune_10pct.yaml pretrained_feature_extractor=... subset.seed=1

Keys are documented in ``docs/protocols.md`` (schema: :data:`harl.eval.finetune.FINETUNE_SCHEMA`).
Running the same command again resumes the same run folder.
"""

from __future__ import annotations

import re
import sys

from harl.cli.common import load_config, run_cli

_KEY = re.compile(r"^[+~]?[A-Za-z_][\w.]*$")


def quote_path_values(argv):
    """Quote override values that contain ``=`` (checkpoint names such as ``run-ep=99.ckpt``),
    which Hydra's override grammar would otherwise reject; lists, dicts and quoted values are
    left alone."""
    out = []
    for a in argv:
        key, sep, value = a.partition("=")
        if sep and _KEY.match(key) and "=" in value and value[:1] not in "[{'\"":
            value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
            a = f"{key}={value}"
        out.append(a)
    return out


def _finetune(argv) -> None:
    from harl.eval.finetune import run_finetune

    from hydra.errors import HydraException

    from harl.config import ConfigError

    argv = quote_path_values(sys.argv[1:] if argv is None else list(argv))
    try:
        cfg = load_config(argv, "harl-finetune",
                          "Fine-tune a pretrained backbone + linear head on a labelled subset (1 %, 10 %, k per class "
                          "or a list file); the learning rate is chosen on a held-out part of the subset.")
    except HydraException as err:  # bad override: one line, not a traceback
        raise ConfigError(str(err).strip().splitlines()[0]) from err
    res = run_finetune(cfg)
    print(f"run folder: {res['run_dir']}")
    print(f"labelled subset: {res['subset_label']} ({res['subset']['size']} images); lr {res['lr']:g} "
          f"({res['lr_source']}), weight decay {res['weight_decay']:g}")
    print(f"val top-1 {res['top1']:.2f}  top-5 {res['top5']:.2f}")


def main(argv=None) -> int:
    return run_cli(_finetune, argv)


if __name__ == "__main__":
    sys.exit(main())
