"""The mask-generator registry.

A generator is registered as a :class:`GeneratorSpec`: a frozen parameter dataclass (every
field becomes a ``--dash-name`` CLI option with its default and help text) and a ``build``
function ``build(params) -> fn`` where ``fn(image) -> (mask, info)``:

- ``image``: H×W×3 uint8 RGB numpy array;
- ``mask``: H×W bool numpy array (True = foreground);
- ``info``: a dict with at least ``n_segments`` (int) and ``fallback`` (str, ``""`` if none).

``fn`` must be picklable or built inside each worker (the runner calls ``build`` once per
worker process), and deterministic, so a resumed run writes identical files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from harl.registry import Registry

GeneratorFn = Callable[[np.ndarray], Tuple[np.ndarray, Dict[str, Any]]]


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    params_cls: type
    build: Callable[[Any], GeneratorFn] = field(compare=False)
    description: str = ""
    uses_torch: bool = False  # workers are started with 'spawn' (fork after torch init is unsafe)
    # extra, non-parameter facts for meta.json (e.g. the sha256 of a weights file): params -> dict
    describe: Optional[Callable[[Any], Dict[str, Any]]] = field(default=None, compare=False)
    # dotted meta.json keys that may change between runs into one folder (not part of the masks' identity)
    volatile: Tuple[str, ...] = ()


#: the built-in generators register themselves when their modules are imported (first lookup)
GENERATORS: Registry[GeneratorSpec] = Registry("mask generator", plugins=("harl.masks.felzenszwalb", "harl.masks.saliency"))


def register_generator(spec: GeneratorSpec) -> GeneratorSpec:
    return GENERATORS.register(spec.name, spec)


def param(default, help: str, **extra):  # noqa: A002 - mirrors argparse's keyword
    """A dataclass field carrying CLI help text (``required=True`` for options without a default)."""
    return field(default=default, metadata={"help": help, **extra})


def load_builtin_generators() -> None:
    """Import the modules that register the built-in generators (also done by the first lookup)."""
    GENERATORS.load()
