"""Health warnings: rules on hand-made value streams, the statistics against naive loops, and one
HARL run whose masks are all background (dead fg branch), warned and, with health.strict, stopped."""

from __future__ import annotations

import json
import logging
import math
import os

import pytest
import torch

from harl.health import COLLAPSE_SPREAD, MIN_CHECKS, HealthTracker, feature_spread, mask_fg_fraction
from harl.errors import HealthError
from harl.train import pretrain
from tests.conftest import scenes_cfg


def test_feature_spread_against_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(6, 5, generator=g) + 3.0
    rows = []
    for b in range(6):
        norm = math.sqrt(sum(float(f[b, c]) ** 2 for c in range(5)))
        rows.append([float(f[b, c]) / norm for c in range(5)])
    stds = []
    for c in range(5):
        col = [r[c] for r in rows]
        mean = sum(col) / 6
        stds.append(math.sqrt(sum((x - mean) ** 2 for x in col) / 5))  # unbiased, like torch.std
    assert float(feature_spread(f)) == pytest.approx(sum(stds) / 5 * math.sqrt(5), rel=1e-5)
    assert float(feature_spread(torch.ones(4, 8) * 3)) == 0.0  # every image the same feature
    # isotropic features: close to 1
    assert float(feature_spread(torch.randn(4096, 64, generator=g))) == pytest.approx(1.0, abs=0.03)


def test_mask_fg_fraction_against_counting():
    m1 = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    m1[0, 0, :2, :2] = 1  # 4 of 32 pixels
    m2 = torch.full((2, 1, 4, 4), 255, dtype=torch.uint8)  # all fg
    assert float(mask_fg_fraction([m1, m2])) == pytest.approx((4 / 32 + 1.0) / 2)


def _feed(tracker, values, n, epoch=0, start=0):
    found = []
    for i in range(n):
        found += tracker.observe(start + 10 * i, epoch, values)
    return found


def test_dead_branch_needs_min_checks_and_is_reported_once_with_numbers():
    t = HealthTracker(num_classes=10)
    assert _feed(t, {"train_frac_valid_f": 0.0, "train_frac_valid_b": 0.9}, MIN_CHECKS - 1) == []
    new = _feed(t, {"train_frac_valid_f": 0.01, "train_frac_valid_b": 0.9}, 1, start=20)
    assert [f.rule for f in new] == ["dead:train_frac_valid_f"]
    assert "HARL's foreground branch is (almost) dead: train_frac_valid_f averaged 0.003 (max 0.010) over " \
           "3 checks, steps 0-20" in new[0].message
    assert _feed(t, {"train_frac_valid_f": 0.0}, 5, start=30) == []  # logged once
    assert t.summary().startswith("health: 1 warning(s) over 8 checks: (1) HARL's foreground branch")
    d = t.to_dict()
    assert d["signals"]["train_frac_valid_f"]["n"] == 8 and d["findings"][0]["step"] == 20


@pytest.mark.parametrize("key", ["train_pix_frac_valid", "train_sgm_query_masked", "train_frac_valid_b"])
def test_every_branch_fraction_has_a_rule(key):
    t = HealthTracker(num_classes=10)
    assert [f.rule for f in _feed(t, {key: 0.0}, MIN_CHECKS)] == [f"dead:{key}"]
    assert _feed(HealthTracker(10), {key: 0.3}, 10) == []


def test_masks_all_fg_or_all_bg():
    assert [f.rule for f in _feed(HealthTracker(10), {"mask_fg_frac": 0.995}, MIN_CHECKS)] == ["masks:all_fg"]
    found = _feed(HealthTracker(10), {"mask_fg_frac": 0.0}, MIN_CHECKS)
    assert [f.rule for f in found] == ["masks:all_bg"] and "mean fg fraction 0.000" in found[0].message
    assert _feed(HealthTracker(10), {"mask_fg_frac": 0.4}, 10) == []


def test_collapse_uses_the_recent_checks():
    t = HealthTracker(10)
    assert _feed(t, {"feature_spread": 0.2}, 5) == []
    assert _feed(t, {"feature_spread": COLLAPSE_SPREAD / 2}, MIN_CHECKS - 1, start=50) == []
    new = _feed(t, {"feature_spread": 0.0}, 1, start=100)
    assert [f.rule for f in new] == ["collapse"] and "max 0.2000" in new[0].message


def test_classifier_at_chance_only_after_the_first_epoch():
    t = HealthTracker(num_classes=10)
    assert _feed(t, {"train_acc1": 10.0}, 10, epoch=0) == []  # first epoch: not judged
    new = _feed(t, {"train_acc1": 11.0}, MIN_CHECKS, epoch=1, start=100)
    assert [f.rule for f in new] == ["chance"] and "chance is 10.00% for 10 classes" in new[0].message
    assert _feed(HealthTracker(10), {"train_acc1": 30.0}, 10, epoch=2) == []
    assert _feed(HealthTracker(1000), {"train_acc1": 1.5}, 10, epoch=2) == []  # 15× chance: learning


def _zero_mask_cfg(scenes_root, tmp_path, **over):
    """HARL on the tiny scenes with a masks tree that is all background (every PNG zero)."""
    import numpy as np
    from PIL import Image

    images = os.path.join(scenes_root, "images", "train")
    zeros = tmp_path / "zero-masks"
    for d, _, files in os.walk(images):
        for name in files:
            out = zeros / os.path.relpath(os.path.join(d, name), images)
            out.parent.mkdir(parents=True, exist_ok=True)
            w, h = Image.open(os.path.join(d, name)).size
            Image.fromarray(np.zeros((h, w), dtype=np.uint8)).save(str(out.with_suffix(".png")))
    cfg = scenes_cfg("harl", scenes_root, str(tmp_path / "ck"), no_validation=True, limit_train_batches=4,
                     max_epochs=1, **{"health.every_n_steps": 1, **over})
    cfg["data"]["masks"] = {"enabled": True, "root": str(zeros), "min_fg_frac": None}
    return cfg


def test_all_background_masks_warn_once_and_are_summarised(scenes_root, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="harl"):
        res = pretrain(_zero_mask_cfg(scenes_root, tmp_path))
    msgs = [r.getMessage() for r in caplog.records]
    warned = [m for m in msgs if m.startswith("health warning at step")]
    assert len(warned) == 2  # each finding once, although every step is checked
    assert any("HARL's foreground branch is (almost) dead: train_frac_valid_f averaged 0.000" in m for m in warned)
    assert any("the masks are almost all background: mean fg fraction 0.000" in m for m in warned)
    summary = [m for m in msgs if m.startswith("health: 2 warning(s) over 4 checks")]
    assert len(summary) == 1
    report = json.load(open(os.path.join(res.run_dir, "health.json")))
    assert report["checks"] == 4 and report["signals"]["train_frac_valid_f"]["max"] == 0.0
    assert {f["rule"] for f in report["findings"]} == {"dead:train_frac_valid_f", "masks:all_bg"}


def test_strict_health_turns_the_warning_into_an_error(scenes_root, tmp_path):
    cfg = _zero_mask_cfg(scenes_root, tmp_path, **{"health.strict": True})
    with pytest.raises(HealthError, match=r"training stopped at step 3 \(health.strict=true\): HARL's foreground"):
        pretrain(cfg)
