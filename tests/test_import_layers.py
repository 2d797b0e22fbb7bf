"""The layers of ``harl/`` hold: no import cycles and every import goes down the layer order.

Every module of ``harl/`` is parsed with ``ast`` (nothing is imported); every ``import`` statement
counts, at module level or inside a function, and so does a string that names a harl module
(``importlib.import_module("harl.x")``, lazy tables), and a package that imports all of its modules
with ``pkgutil.iter_modules`` imports each of them. The order is the one of
``docs/architecture.md`` ("Layers"); a module may import its own layer and the layers below it.
The only imports that go up are registry registrations: a registry in a low layer imports, by
module name on its first lookup, the package whose modules register into it
(:class:`harl.registry.Registry` ``plugins=``). They are listed in :data:`REGISTRATION` below,
printed by the test, and must match the code exactly.
"""

from __future__ import annotations

import ast
import os
from collections import defaultdict
from typing import Dict, List, Set, Tuple

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "harl")

#: the layer order, lowest first: (layer, module prefixes). A module belongs to the layer of its
#: longest matching prefix, so a few modules sit apart from their package (said in a comment).
LAYERS: List[Tuple[str, Tuple[str, ...]]] = [
    ("base", ("harl.errors", "harl.registry", "harl.utils", "harl.version")),
    ("config", ("harl.config", "harl.config_values")),
    ("ops", ("harl.ops",
             "harl.masks.ops")),  # small pure mask operations
    ("nn", ("harl.backbones", "harl.heads", "harl.losses", "harl.optim", "harl.checkpoint", "harl.weights")),
    ("data", ("harl.data",)),
    ("methods", ("harl.methods",
                 "harl.eval.pretrained")),  # loading a pretrained backbone (SGM's saliency net, eval, zoo)
    ("run", ("harl.train", "harl.guard", "harl.health", "harl.clean_stop", "harl.eval", "harl.masks",
             "harl.report")),
    ("zoo", ("harl.zoo",)),
    ("cli", ("harl.cli", "harl.quickstart", "harl")),  # ``harl`` itself: the lazy ``harl.load_backbone``
]

#: (registry module, plugin module) pairs: the only imports that may go up a layer or close a cycle
REGISTRATION: Set[Tuple[str, str]] = {
    ("harl.registry", "harl.methods"),  # METHODS
    ("harl.registry", "harl.data.catalog"),  # DATASETS
    ("harl.registry", "harl.optim"),  # OPTIMIZERS
    ("harl.masks.registry", "harl.masks.felzenszwalb"),  # GENERATORS
    ("harl.masks.registry", "harl.masks.saliency"),
    ("harl.eval.runner", "harl.eval.dense"),  # EVAL_MODES
    ("harl.eval.runner", "harl.eval.knn_probe"),
    ("harl.eval.runner", "harl.eval.linear"),
}


def _modules() -> Dict[str, str]:
    mods = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        for f in sorted(filenames):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                mods[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return mods


MODULES = _modules()


def _target(name: str) -> str:
    """The harl module an import of ``name`` loads (``harl.a.b.func`` → ``harl.a.b``)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


class Import:
    def __init__(self, src: str, dst: str, line: int, kind: str):
        self.src, self.dst, self.line, self.kind = src, dst, line, kind

    def where(self) -> str:
        return f"{os.path.relpath(MODULES[self.src], os.path.dirname(ROOT))}:{self.line}"


def _imports() -> List[Import]:
    out = []
    seen = set()
    for mod, path in MODULES.items():
        is_pkg = path.endswith("__init__.py")
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        for node in ast.walk(tree):
            names: List[str] = []
            kind = "import"
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = (mod if is_pkg else mod.rsplit(".", 1)[0]).split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
            elif (is_pkg and isinstance(node, ast.Attribute) and node.attr == "iter_modules"
                  and isinstance(node.value, ast.Name) and node.value.id == "pkgutil"):
                # a package that imports every module inside it (``harl.methods``)
                names, kind = sorted(m for m in MODULES if m.rsplit(".", 1)[0] == mod), "discover"
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in MODULES
                  and "." in node.value):  # a plain "harl" is the logger's name
                names, kind = [node.value], "string"
            for name in names:
                if name == "harl" or name.startswith("harl."):
                    dst = _target(name)
                    key = (mod, dst, getattr(node, "lineno", 0), kind)
                    if dst in MODULES and dst != mod and key not in seen:
                        seen.add(key)
                        out.append(Import(*key))
    return out


IMPORTS = _imports()


def layer_of(mod: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"module {mod} is in no layer: add it to LAYERS (and to docs/architecture.md)"
    return best


def _registration(imp: Import) -> bool:
    return imp.kind == "string" and (imp.src, imp.dst) in REGISTRATION


def test_registration_allowlist_is_exact():
    """The string imports that go up a layer are exactly the registrations listed (printed here)."""
    print("\nregistry registration (the only upward imports):")
    for src, dst in sorted(REGISTRATION):
        print(f"  {src} -> {dst}")
    found = {(i.src, i.dst) for i in IMPORTS if i.kind == "string" and layer_of(i.dst) > layer_of(i.src)}
    found |= {(i.src, i.dst) for i in IMPORTS if _registration(i)}
    assert found == REGISTRATION, (f"registrations in the code but not in REGISTRATION: {sorted(found - REGISTRATION)}; "
                                   f"listed but not in the code: {sorted(REGISTRATION - found)}")


def test_every_layer_prefix_names_a_module():
    stale = [p for _, prefixes in LAYERS for p in prefixes
             if not any(m == p or m.startswith(p + ".") for m in MODULES)]
    assert not stale, f"LAYERS names modules that do not exist (moved?): {stale}"


def test_imports_go_down_the_layers():
    names = [n for n, _ in LAYERS]
    bad = []
    for imp in IMPORTS:
        if _registration(imp):
            continue
        a, b = layer_of(imp.src), layer_of(imp.dst)
        if b > a:
            bad.append(f"{imp.where()}: {imp.src} ({names[a]}) imports {imp.dst} ({names[b]}), a higher layer")
    assert not bad, "imports that go up the layer order (" + " → ".join(names) + "):\n" + "\n".join(bad)


def _graph() -> Dict[str, Set[str]]:
    """Import edges, plus the package ``__init__`` that importing ``harl.a.b`` runs first."""
    g: Dict[str, Set[str]] = defaultdict(set)
    for imp in IMPORTS:
        if _registration(imp):
            continue
        g[imp.src].add(imp.dst)
        parent = imp.dst
        while "." in parent:
            parent = parent.rsplit(".", 1)[0]
            if parent == "harl" or imp.src == parent or imp.src.startswith(parent + "."):
                break
            g[imp.src].add(parent)
    return g


def _cycles(g: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []
    counter = 0
    for root in sorted(MODULES):
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles():
    g = _graph()
    cycles = _cycles(g)
    msgs = []
    for comp in cycles:
        lines = [f"{i.where()}: {i.src} -> {i.dst}" for i in IMPORTS
                 if i.src in comp and (i.dst in comp or any(i.dst.startswith(c + ".") for c in comp))
                 and not _registration(i)]
        msgs.append(f"cycle through {comp}:\n  " + "\n  ".join(lines))
    assert not cycles, "import cycles (other than registry registration):\n" + "\n".join(msgs)


def test_the_checker_sees_a_planted_violation():
    """The checks can fail: an upward import and a two-module cycle are reported with file:line."""
    planted = [Import("harl.config", "harl.methods.base", 7, "import")]
    names = [n for n, _ in LAYERS]
    assert layer_of("harl.methods.base") > layer_of("harl.config"), names
    g = defaultdict(set, {"harl.errors": {"harl.registry"}, "harl.registry": {"harl.errors"}})
    assert _cycles(g) == [["harl.errors", "harl.registry"]]
    assert planted[0].where() == "harl/config.py:7"


@pytest.mark.parametrize("module", ["harl.config", "harl.config_values", "harl.eval.linear_config"])
def test_config_modules_import_neither_methods_nor_data(module):
    """Validating a config reaches methods, datasets and optimizers only through the registries."""
    bad = [f"{i.where()}: {i.dst}" for i in IMPORTS if i.src == module and i.kind == "import"
           and i.dst.split(".")[:2] in (["harl", "methods"], ["harl", "data"], ["harl", "optim"], ["harl", "train"])]
    assert not bad, bad


def test_docs_show_the_same_layers():
    """docs/architecture.md lists the same layers in the same order."""
    doc = os.path.join(os.path.dirname(ROOT), "docs", "architecture.md")
    with open(doc, encoding="utf-8") as f:
        text = f.read()
    marker = "<!-- layers: "
    assert marker in text, "docs/architecture.md has no '<!-- layers: ... -->' line"
    listed = text.split(marker, 1)[1].split("-->", 1)[0].split()
    assert listed == [n for n, _ in LAYERS], (listed, [n for n, _ in LAYERS])


def test_registry_imports_its_plugins_on_first_lookup_only(tmp_path, monkeypatch):
    import sys

    from harl.registry import Registry

    pkg = tmp_path / "plugpkg_h14"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from tests_reg_h14 import REG\nREG.register('a', 1)\nCOUNT = 1\n")
    (tmp_path / "tests_reg_h14.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("thing", plugins=("plugpkg_h14",))
    import tests_reg_h14

    tests_reg_h14.REG = reg
    reg.register("b", 2)  # registering does not load the plugins
    assert "plugpkg_h14" not in sys.modules
    assert reg.names() == ["a", "b"] and "plugpkg_h14" in sys.modules
    assert reg.get("a") == 1 and len(reg) == 2
    broken = Registry("broken", plugins=("no_such_module_h14",))
    for _ in range(2):  # a failed load is retried, not remembered as done
        with pytest.raises(ModuleNotFoundError):
            broken.names()
    for name in ("plugpkg_h14", "tests_reg_h14"):
        sys.modules.pop(name, None)
