"""The docs stand alone: code, recipes and docs point into the project's own ``docs/`` (every
``docs/...md`` they name exists), and nothing cites a specification outside the repository."""

import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("harl", "docs", "scripts", "benchmarks", "tests", "zoo")
SUFFIXES = (".py", ".md", ".yaml", ".sh", ".json")
DOC_PATH = re.compile(r"\bdocs/[\w./-]+?\.md\b")
# the outside specification cited by name or by a bare section sign with a number: a document that is not in the repository
OUTSIDE_SPEC = re.compile(r"\bSPEC\b|(?<![Pp]aper )(?<!paper's )§\s?\d")


def _files():
    yield os.path.join(REPO, "README.md")
    for top in SCANNED:
        for root, dirs, files in os.walk(os.path.join(REPO, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"
                       and _rel(os.path.join(root, d)) not in (os.path.join("tests", "data"),
                                                                os.path.join("benchmarks", "results"))]
            for name in files:
                if name.endswith(SUFFIXES):
                    yield os.path.join(root, name)


def _rel(path):
    return os.path.relpath(path, REPO)


def test_every_named_doc_exists():
    missing = []
    for path in _files():
        if _rel(path) == os.path.join("tests", "test_docs_links.py"):
            continue
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        for ref in set(DOC_PATH.findall(text)):
            if not os.path.isfile(os.path.join(REPO, ref)):
                missing.append(f"{_rel(path)} -> {ref}")
    assert not missing, "docs named but absent:\n" + "\n".join(sorted(missing))


def test_nothing_cites_an_outside_specification():
    found = []
    for path in _files():
        if _rel(path) == os.path.join("tests", "test_docs_links.py"):
            continue
        with open(path, encoding="utf-8") as fh:
            for no, line in enumerate(fh, 1):
                if OUTSIDE_SPEC.search(line):
                    found.append(f"{_rel(path)}:{no}: {line.strip()[:100]}")
    assert not found, "point into docs/ instead:\n" + "\n".join(found)


@pytest.mark.parametrize("page", ["harl.md", "hapicl.md", "sgm.md", "README.md"])
def test_method_pages_exist_and_are_indexed(page):
    assert os.path.isfile(os.path.join(REPO, "docs", "methods", page))
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as fh:
        assert f"docs/methods/{page}" in fh.read()
