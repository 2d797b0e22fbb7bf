"""A small name → object registry with helpful errors, and the registries that cross layers.

Used for methods, backbones, optimizers, schedulers, datasets and mask generators so that
nothing is looked up through ``if name == ...`` chains.

Registration is the one place where a lower layer reaches a higher one. :data:`METHODS`,
:data:`DATASETS` and :data:`OPTIMIZERS` live here, at the bottom of the layer order, so that
:mod:`harl.config` can look a name up without importing the method zoo or the data package; each
is created with ``plugins=`` (module names, as strings) that the registry imports on its first
lookup, and those modules register their entries (``@METHODS.register("byol")``). Registering
never triggers that import; looking up (``get``, ``in``, ``names``, iteration) does, once.
``tests/test_import_layers.py`` allows exactly these string imports and no other upward edge.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Dict, Generic, Iterator, Optional, Sequence, TypeVar

T = TypeVar("T")


def close_match_hint(name: str, candidates) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest candidate, or ``""``."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.5)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


class Registry(Generic[T]):
    """Maps names to objects; ``register`` works as a decorator.

    >>> METHODS = Registry("method")
    >>> @METHODS.register("byol")
    ... class BYOL: ...
    """

    def __init__(self, kind: str, plugins: Sequence[str] = ()):
        self.kind = kind
        self.plugins = tuple(plugins)  # modules that register the built-in entries (imported on first lookup)
        self._loaded = not self.plugins
        self._items: Dict[str, T] = {}

    def load(self) -> None:
        """Import the :attr:`plugins` modules once (they register their entries)."""
        if self._loaded:
            return
        self._loaded = True  # set first: a plugin that looks a name up while importing must not recurse
        try:
            for module in self.plugins:
                importlib.import_module(module)
        except BaseException:
            self._loaded = False
            raise

    def register(self, name: str, obj: Optional[T] = None):
        if obj is not None:
            self._add(name, obj)
            return obj

        def decorator(o: T) -> T:
            self._add(name, o)
            return o

        return decorator

    def _add(self, name: str, obj: T) -> None:
        if name in self._items and self._items[name] is not obj:
            raise KeyError(f"{self.kind} '{name}' is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        self.load()
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} '{name}'{close_match_hint(name, self._items)}; "
                f"available: {', '.join(sorted(self._items))}"
            ) from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self.load()
        return iter(sorted(self._items))

    def __len__(self) -> int:
        self.load()
        return len(self._items)

    def names(self):
        self.load()
        return sorted(self._items)

    def items(self):
        self.load()
        return sorted(self._items.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


#: method name → LightningModule class (each file of :mod:`harl.methods` registers its method)
METHODS: Registry = Registry("method", plugins=("harl.methods",))
#: ``data.dataset`` name → :class:`harl.data.registry.DatasetSpec` (built-ins: :mod:`harl.data.catalog`)
DATASETS: Registry = Registry("dataset", plugins=("harl.data.catalog",))
#: optimizer name → :class:`harl.optim.OptimizerSpec` (sgd, lars, adam, adamw: :mod:`harl.optim`)
OPTIMIZERS: Registry = Registry("optimizer", plugins=("harl.optim",))


def check_choice(name: str, choices, kind: str) -> str:
    """Return ``name`` if it is one of ``choices``; else a ValueError with a close-match hint."""
    if name not in choices:
        raise ValueError(f"unknown {kind} '{name}'{close_match_hint(name, choices)}; "
                         f"choose one of: {', '.join(sorted(choices))}")
    return name


def pick(table, name: str, kind: str):
    """``table[name]`` for a name that was validated once, at config time (``check_cfg``).

    The hot-path form of :func:`check_choice`: per-step code pays one dict lookup and no
    validation; a caller from outside that passes an unknown name still gets check_choice's
    ValueError with its close-match hint.
    """
    try:
        return table[name]
    except KeyError:
        check_choice(name, table, kind)
        raise
