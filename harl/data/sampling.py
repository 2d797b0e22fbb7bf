"""Deterministic, resumable data order and augmentation randomness for pretraining.

Resuming a run from an end-of-epoch checkpoint must show the model the same batches, with the same
augmentations, as the uninterrupted run. Global RNG state cannot give that (Lightning creates and
prefetches the first batches before any epoch hook runs, and a resumed process starts from a
different RNG state), so randomness is made a pure function of ``(seed, epoch, index)``:

- :class:`EpochShuffleSampler` shuffles with a generator seeded by ``(seed, epoch)``, shards the
  permutation across DDP ranks, and yields *keys* ``epoch·N + index``. The epoch comes from
  ``epoch_source`` (e.g. the trainer's restored ``current_epoch``) or, without one, from counting
  the iterations it has started; :class:`SamplerState` (a Lightning callback) stores that counter
  in checkpoints.
- :class:`EpochSeededDataset` decodes a key and runs the wrapped dataset's ``__getitem__`` with the
  torch and python RNGs seeded from ``(seed, epoch, index)`` (forked, so the caller's RNG state is
  untouched). Results do not depend on the number of loader workers either.
"""

from __future__ import annotations

import random
from typing import Callable, Iterator, Optional

import torch
from lightning.pytorch import Callback
from torch.utils.data import Dataset, Sampler

from harl.utils.distributed import rank, world_size

_MIX = 0x9E3779B97F4A7C15


def mix_seed(*parts: int) -> int:
    """A 63-bit seed mixing integer ``parts`` (splitmix64-style, stable across processes)."""
    h = 0
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * _MIX & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 27
    return h & 0x7FFFFFFFFFFFFFFF


class EpochShuffleSampler(Sampler[int]):
    """Per-epoch permutation from ``(seed, epoch)``, split across ranks; yields ``epoch·N + index``.

    Every rank gets ``N // world`` indices (the tail of the permutation is dropped so ranks stay in
    step). ``epoch`` is the number of epochs started so far; it advances when an iteration starts.
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True,
                 epoch_source: Optional[Callable[[], int]] = None):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch_source = epoch_source
        self.epoch = 0
        #: samples of the next iteration to skip (a run resumed mid-epoch, see harl.clean_stop)
        self.skip = 0

    def __len__(self) -> int:
        return self.num_samples // world_size()

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's dataset indices for ``epoch``."""
        n, world = self.num_samples, world_size()
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            perm = torch.randperm(n, generator=g)
        else:
            perm = torch.arange(n)
        per_rank = n // world
        return perm[: per_rank * world][rank()::world]

    def __iter__(self) -> Iterator[int]:
        epoch = int(self.epoch_source()) if self.epoch_source is not None else self.epoch
        self.epoch = epoch + 1
        base = epoch * self.num_samples
        skip, self.skip = self.skip, 0
        return iter((base + self.indices(epoch)[skip:]).tolist())


class EpochSeededDataset(Dataset):
    """Wraps a dataset; item ``key = epoch·N + index`` runs ``dataset[index]`` under seeded RNGs.

    ``seed_items=False`` only decodes the key (for datasets without randomness, e.g. cached features).
    """

    def __init__(self, dataset: Dataset, seed: int, seed_items: bool = True):
        self.dataset = dataset
        self.seed = int(seed)
        self.seed_items = seed_items

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # expose the wrapped dataset's attributes (num_skipped, ...)
        if name in ("dataset", "seed", "seed_items"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: int):
        epoch, index = divmod(int(key), len(self.dataset))
        if not self.seed_items:
            return self.dataset[index]
        s = mix_seed(self.seed, epoch, index)
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also queue a lazy accelerator seeding
            # call (it formats a stack trace) for every item
            torch.random.default_generator.manual_seed(s)
            random.seed(s)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)


class SamplerState(Callback):
    """Saves the sampler's epoch counter in checkpoints and restores it on resume.

    A mid-epoch checkpoint (``override`` set while it is written) also stores how many samples of
    that epoch were already trained on; a run resumed from it skips them."""

    def __init__(self, sampler: EpochShuffleSampler):
        self.sampler = sampler
        self.override: Optional[dict] = None

    def state_dict(self):
        if self.override is not None:
            return dict(self.override)
        return {"sampler_epoch": self.sampler.epoch}

    def load_state_dict(self, state_dict) -> None:
        self.sampler.epoch = int(state_dict["sampler_epoch"])
        self.sampler.skip = int(state_dict.get("skip_samples", 0))
