"""fashion-scenes: a deterministic, CPU-sized demo dataset of one Fashion-MNIST item on clutter.

Modules: ``photos`` (background photos by name), ``params`` (every knob, output splits, seeded
random streams), ``render`` (one scene and its mask, pure), ``generate`` (writing, resuming and
checking a tree). Every public name is importable from this package.

Each scene is a ``size``×``size`` RGB image: a background (by default a random square crop of one of
scikit-image's sample photos, resized), plus one Fashion-MNIST item resized to a random side of
``scale`` × ``size``, optionally tinted, pasted at a random position where its intensity exceeds
``threshold``. That silhouette is written as the ground-truth foreground mask (PNG, 0/255), so
object-aware methods (HARL, HAPiCL, SGM) can be trained and checked against a known mask.

Layout written under ``out``::

    params.json                                   written first: generator, version, parameters
    images/{train,test}/<class_name>/<id>.png     RGB scenes (ImageFolder layout)
    masks/{train,test}/<class_name>/<id>.png      L masks, {0, 255}, same relative path
    masks/<split>/manifest.csv                    docs/masks.md mask manifest (relpath, height, ...)
    images/test_<style>/..., masks/test_<style>/  optional test variants (same items and layout as
                                                  ``test``, background replaced by ``<style>``)
    manifest.csv                                  one row per scene: source item, layout, fg fraction
    meta.json                                     written last: parameters, counts, train mean/std

Determinism: every random draw of scene ``i`` of a split comes from generators seeded by
``(seed, split, purpose, i)`` and all integer statistics are summed exactly, so the tree is
byte-identical for the same parameters whatever the number of workers, the chunking, or how many
times a run was interrupted and resumed. Train scenes use only Fashion-MNIST train items, test
scenes only test items. Scenes come in blocks of ten holding each class once (in a seeded order), so
every prefix is class-balanced to ±1; within a class the items are drawn without replacement (in a
seeded permutation) until the split's items run out, then reused.
"""

from harl.data.fashion_scenes.generate import (
    MANIFEST_FIELDS, generate_fashion_scenes, read_meta,
)
from harl.data.fashion_scenes.params import (
    BACKGROUND_STYLES, GENERATOR_NAME, GENERATOR_VERSION, SCENES_MEAN, SCENES_STD, TEST_ONLY_STYLES, TINT_MODES,
    FashionScenesParams, OutputSplit, id_width, output_splits, scene_relpath, scene_split_dirs,
)
from harl.data.fashion_scenes.photos import DEFAULT_PALETTE, DEFAULT_PHOTOS, DEFAULT_UNSEEN_PHOTOS, PHOTOS, load_photo
from harl.data.fashion_scenes.render import BACKGROUNDS, TINTS, SceneContext, render_background, render_scene

__all__ = [
    "BACKGROUNDS", "BACKGROUND_STYLES", "DEFAULT_PALETTE", "DEFAULT_PHOTOS", "DEFAULT_UNSEEN_PHOTOS", "GENERATOR_NAME",
    "GENERATOR_VERSION", "MANIFEST_FIELDS", "PHOTOS", "SCENES_MEAN", "SCENES_STD", "TEST_ONLY_STYLES", "TINTS",
    "TINT_MODES", "FashionScenesParams", "OutputSplit", "SceneContext", "generate_fashion_scenes", "id_width",
    "load_photo", "output_splits", "read_meta", "render_background", "render_scene", "scene_relpath",
    "scene_split_dirs",
]
