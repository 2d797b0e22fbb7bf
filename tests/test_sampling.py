"""Deterministic, resumable data order and per-item augmentation seeding."""

import random

import torch
from torch.utils.data import DataLoader, Dataset

import harl.data.sampling as sampling
from harl.data.sampling import EpochSeededDataset, EpochShuffleSampler, SamplerState, mix_seed


class _RandomItems(Dataset):
    """Each item draws from torch and python RNGs (like augmentations do)."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return i, float(torch.rand(())), random.random()


def test_keys_encode_epoch_and_permutation_is_seeded():
    s = EpochShuffleSampler(10, seed=3)
    e0, e1 = list(s), list(s)
    assert sorted(e0) == list(range(10)) and sorted(k - 10 for k in e1) == list(range(10))
    assert e0 != [k - 10 for k in e1]  # a new order every epoch
    s2 = EpochShuffleSampler(10, seed=3)
    assert list(s2) == e0
    assert list(EpochShuffleSampler(10, seed=4)) != e0


def test_state_dict_resumes_the_epoch_counter():
    s = EpochShuffleSampler(10, seed=0)
    list(s), list(s)
    state = SamplerState(s).state_dict()
    fresh = EpochShuffleSampler(10, seed=0)
    SamplerState(fresh).load_state_dict(state)
    assert list(fresh) == list(s)


def test_ranks_partition_the_permutation(monkeypatch):
    shards = []
    for r in range(3):
        monkeypatch.setattr(sampling, "world_size", lambda: 3)
        monkeypatch.setattr(sampling, "rank", lambda r=r: r)
        s = EpochShuffleSampler(10, seed=1)
        assert len(s) == 3
        shards.append(s.indices(0).tolist())
    flat = sum(shards, [])
    assert len(flat) == 9 and len(set(flat)) == 9  # disjoint, tail of 1 dropped


def test_items_depend_only_on_seed_epoch_index_and_not_on_workers():
    ds = EpochSeededDataset(_RandomItems(), seed=7)
    torch.manual_seed(123)
    random.seed(5)
    before = (torch.get_rng_state().clone(), random.getstate())
    a = [ds[k] for k in range(20)]
    assert torch.equal(before[0], torch.get_rng_state()) and before[1] == random.getstate()  # caller untouched
    assert [ds[k] for k in range(20)] == a
    assert a[3][1:] != a[13][1:]  # same index, next epoch: new randomness
    loader = lambda w: DataLoader(ds, batch_size=4, sampler=EpochShuffleSampler(10, 7), num_workers=w)
    r0 = [b[1].tolist() for b in loader(0)]
    r2 = [b[1].tolist() for b in loader(2)]
    assert r0 == r2


def test_mix_seed_is_stable():
    assert mix_seed(1, 2, 3) == mix_seed(1, 2, 3) != mix_seed(1, 3, 2)
    assert 0 <= mix_seed(2**40, 7) < 2**63
