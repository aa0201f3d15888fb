"""Length-bucketed batching: every image once per epoch, similar lengths together, seeded."""

from __future__ import annotations

import random

import pytest

from captionkit.data.dataset import LengthBucketSampler


def _lengths(n: int = 1000, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [rng.randint(5, 25) + rng.random() for _ in range(n)]


@pytest.mark.parametrize("n,batch", [(1000, 32), (31, 8), (5, 8)])
def test_each_image_exactly_once_per_epoch(n: int, batch: int) -> None:
    s = LengthBucketSampler(_lengths(n), batch, seed=3, pool=4)
    batches = list(s)
    assert len(batches) == len(s)
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert all(1 <= len(b) <= batch for b in batches)


def test_batches_hold_similar_lengths() -> None:
    lengths = _lengths()
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b)
              for b in LengthBucketSampler(lengths, 32, pool=10)]
    # a random batch of 32 spans nearly the whole 5..26 range; a bucketed one a few words
    assert sum(spread) / len(spread) < 4


def test_order_is_a_pure_function_of_seed_and_epoch() -> None:
    a = LengthBucketSampler(_lengths(), 32, seed=1)
    b = LengthBucketSampler(_lengths(), 32, seed=1)
    first, second = list(a), list(a)
    assert first == list(b) and second == list(b)
    assert first != second  # a new shuffle each epoch
    assert a.batches(1) == second
    assert LengthBucketSampler(_lengths(), 32, seed=2).batches(0) != first


def test_drop_last() -> None:
    s = LengthBucketSampler(_lengths(100), 32, drop_last=True)
    assert len(s) == 3 and all(len(b) == 32 for b in s)


def test_pool_zero_is_plain_shuffling():
    lengths = _lengths(200)
    s = LengthBucketSampler(lengths, 32, seed=4, pool=0)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(200))
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches[:-1]]
    assert sum(spread) / len(spread) > 10  # lengths are mixed, not bucketed
