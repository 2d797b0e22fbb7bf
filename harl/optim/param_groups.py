"""Parameter-group helpers."""

from __future__ import annotations

from typing import Dict, List


def split_bias_and_norm(groups: List[Dict]) -> List[Dict]:
    """Split each group into (decayed, no-decay) where 1-D params (biases, norm weights) get wd 0.

    Group options (``lr``, ``static_lr``, ``name``) are kept on both halves.
    """
    out: List[Dict] = []
    for g in groups:
        params = list(g["params"])
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        opts = {k: v for k, v in g.items() if k != "params"}
        if decay:
            out.append({**opts, "params": decay})
        if no_decay:
            out.append({**opts, "name": f"{opts.get('name', 'group')}_no_decay", "params": no_decay, "weight_decay": 0.0})
    return out
