"""The planted-bug harness (benchmarks/mutation.py) cannot rot: every patch still applies."""

from __future__ import annotations

import os

from benchmarks.mutation import CONTROLS, MUTANTS, ROOT, SEL, apply, check_patches, make_tree


def test_every_mutant_applies_to_the_current_source():
    assert check_patches() == []
    real = [m for m in MUTANTS if m.name not in CONTROLS]
    assert len(real) >= 25
    files = {m.path for m in real}
    for part in ("byol", "simclr", "mocov2plus", "harl.py", "hapicl", "sgm", "base", "distributed", "schedulers"):
        assert any(part in f for f in files), part
    for m in MUTANTS:
        for arg in SEL[m.tests]:
            if arg.startswith("tests/"):
                assert os.path.isfile(os.path.join(ROOT, arg)), arg


def test_mutants_are_applied_to_a_copy_only(tmp_path):
    m = next(m for m in MUTANTS if m.name == "harl_fg_bg_swapped")
    original = open(os.path.join(ROOT, m.path), encoding="utf-8").read()
    make_tree(str(tmp_path))
    apply(str(tmp_path), m)
    mutated = open(tmp_path / m.path, encoding="utf-8").read()
    assert m.new in mutated and m.old not in mutated
    assert open(os.path.join(ROOT, m.path), encoding="utf-8").read() == original
