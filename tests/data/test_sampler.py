"""Length and modality grouping of the sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignkd.data.sampler import GroupedSampler


def batches(sampler: GroupedSampler, batch_size: int) -> list[list[int]]:
    order = list(sampler)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def test_only_images_falls_back_to_length():
    sampler = GroupedSampler([5, 7, 6], [True, True, True], batch_size=2, group_by="modality_length")

    assert sampler.group_by == "length"
    assert sorted(sampler) == [0, 1, 2]


def test_only_text_falls_back_to_length():
    sampler = GroupedSampler([5, 7, 6], [False, False, False], batch_size=2, group_by="modality_length")

    assert sorted(sampler) == [0, 1, 2]


@pytest.mark.parametrize("seed", range(8))
def test_batches_hold_one_modality(seed):
    has_image = [True, True, False, False]
    sampler = GroupedSampler([10, 12, 3, 4], has_image, batch_size=2, seed=seed, group_by="modality_length")

    for batch in batches(sampler, 2):
        assert len({has_image[index] for index in batch}) == 1


def test_at_most_one_mixed_batch():
    rng = np.random.default_rng(0)
    has_image = rng.random(103) < 0.4
    lengths = rng.integers(5, 200, 103)
    sampler = GroupedSampler(lengths, has_image, batch_size=4, world_size=2, group_by="modality_length")

    for epoch in range(3):
        sampler.set_epoch(epoch)
        mixed = [batch for batch in batches(sampler, 4) if len({bool(has_image[index]) for index in batch}) > 1]
        assert len(mixed) <= 1


@pytest.mark.parametrize("group_by", ["length", "modality_length"])
def test_each_index_once_per_epoch(group_by):
    rng = np.random.default_rng(1)
    sampler = GroupedSampler(
        rng.integers(1, 50, 37), rng.random(37) < 0.5, batch_size=3, world_size=2, group_by=group_by
    )

    assert len(sampler) == 37
    assert sorted(sampler) == list(range(37))


def test_same_seed_same_order():
    lengths = list(range(20))
    first = GroupedSampler(lengths, None, batch_size=2, group_by="length", seed=3)
    second = GroupedSampler(lengths, None, batch_size=2, group_by="length", seed=3)

    assert list(first) == list(second)


def test_set_epoch_reshuffles():
    sampler = GroupedSampler(list(range(40)), None, batch_size=2, group_by="length")

    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)

    assert first != second
    assert list(sampler) == first


def test_longest_sample_first():
    lengths = [3] * 30 + [100] + [4] * 9
    for seed in range(5):
        sampler = GroupedSampler(lengths, None, batch_size=4, group_by="length", seed=seed)

        assert next(iter(sampler)) == 30


def test_longest_leftover_moved_first():
    # 9 samples in steps of 4 leave one sample over; the longest must still come first.
    lengths = [1, 2, 3, 4, 5, 6, 7, 8, 50]
    for seed in range(10):
        sampler = GroupedSampler(lengths, None, batch_size=4, group_by="length", seed=seed, group_steps=1)

        order = list(sampler)
        assert lengths[order[0]] == 50
        assert sorted(order) == list(range(9))


def test_batches_sorted_within_group():
    lengths = np.arange(32)
    sampler = GroupedSampler(lengths, None, batch_size=4, group_by="length", group_steps=8)

    # One group contains every sample, so each batch is 4 consecutive lengths.
    for batch in batches(sampler, 4):
        values = sorted(lengths[batch].tolist())
        assert values[-1] - values[0] == 3


def test_padding_reduced_against_random():
    rng = np.random.default_rng(2)
    lengths = rng.integers(10, 500, 400)
    grouped = GroupedSampler(lengths, None, batch_size=8, group_by="length")

    def padded_tokens(order: list[int]) -> int:
        return sum(8 * int(lengths[order[start : start + 8]].max()) for start in range(0, len(order), 8))

    random_order = rng.permutation(400).tolist()
    assert padded_tokens(list(grouped)) < 0.7 * padded_tokens(random_order)


def test_steps_span_world_size():
    lengths = np.arange(24)
    sampler = GroupedSampler(lengths, None, batch_size=2, world_size=3, group_by="length", group_steps=4)

    order = list(sampler)
    # A step is 6 consecutive indices (3 ranks x 2 samples), and each contains 6 consecutive lengths.
    for start in range(0, 24, 6):
        values = sorted(lengths[order[start : start + 6]].tolist())
        assert values[-1] - values[0] == 5


def test_works_with_dataloader():
    dataset = list(range(10))
    sampler = GroupedSampler([1] * 5 + [9] * 5, [True] * 5 + [False] * 5, batch_size=5, group_by="modality_length")

    loader = torch.utils.data.DataLoader(dataset, batch_size=5, sampler=sampler)

    for batch in loader:
        assert batch.lt(5).all() or batch.ge(5).all()


def test_modality_needs_has_image():
    with pytest.raises(ValueError, match="needs has_image"):
        GroupedSampler([1, 2], None, batch_size=1, group_by="modality_length")


def test_mismatched_lengths_rejected():
    with pytest.raises(ValueError, match="has_image has 1 entries but lengths has 2"):
        GroupedSampler([1, 2], [True], batch_size=1)
