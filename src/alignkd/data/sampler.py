"""A sampler that groups samples of similar length, and optionally of one modality, into batches.

The sampler yields dataset indices for a DataLoader (or transformers' Trainer) that cuts
them into consecutive device batches of `batch_size`, with one step made of `world_size`
consecutive device batches: accelerate gives process i the batches i, i + world_size, ...
(accelerate 1.16, `BatchSamplerShard` with `split_batches=False`). Per epoch:

1. The indices are shuffled with `seed + epoch`.
2. They are cut into groups of `group_steps` steps (`group_steps * world_size * batch_size`
   indices), and each group is sorted by length, longest first. So every device batch, and
   every step across ranks, contains samples of similar length, which cuts padding.
3. The steps are shuffled again, and the step containing the longest sample of the
   epoch goes first, so that an out-of-memory error shows in the first step.

With `group_by="modality_length"` the image samples and the text-only samples are grouped
separately, so each device batch contains one modality. The exceptions are the leftovers: the
last incomplete step of each modality goes at the end of the epoch, image samples first.
At most one device batch per epoch then mixes modalities. When only one modality is
present, the sampler groups by length alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch

logger = logging.getLogger(__name__)

GroupBy = Literal["length", "modality_length"]

# transformers' LengthGroupedSampler sorts 50 batches together, or fewer so that a small data
# set still has 4 groups (transformers 5.25, trainer_pt_utils.get_length_grouped_indices).
DEFAULT_GROUP_STEPS = 50
_MIN_GROUPS = 4


class GroupedSampler(torch.utils.data.Sampler[int]):
    """Yields each dataset index once per epoch, grouped by length (and modality).

    Args:
        lengths: the sequence length of each sample, vision tokens counted.
        has_image: whether each sample has an image; required for "modality_length".
        batch_size: samples per device batch.
        world_size: number of data-parallel processes; one step takes `world_size` device batches.
        seed: base seed; epoch e shuffles with `seed + e`.
        group_by: "length" or "modality_length".
        group_steps: steps sorted together. None: 50, or fewer to keep at least 4 groups.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        has_image: Sequence[bool] | np.ndarray | None,
        batch_size: int,
        world_size: int = 1,
        seed: int = 0,
        group_by: GroupBy = "modality_length",
        group_steps: int | None = None,
    ):
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size and world_size must be at least 1, got {batch_size} and {world_size}")
        if group_by not in ("length", "modality_length"):
            raise ValueError(f"group_by must be 'length' or 'modality_length', got {group_by!r}")

        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.has_image = None if has_image is None else np.asarray(has_image, dtype=bool)
        if self.has_image is not None and len(self.has_image) != len(self.lengths):
            raise ValueError(f"has_image has {len(self.has_image)} entries but lengths has {len(self.lengths)}")
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0
        self.step_size = batch_size * world_size

        self.group_by: GroupBy = group_by
        if group_by == "modality_length":
            if self.has_image is None:
                raise ValueError("group_by 'modality_length' needs has_image")
            images = int(self.has_image.sum())
            if images in (0, len(self.lengths)):
                logger.info(
                    "All %d samples are %s, so modality grouping falls back to length grouping",
                    len(self.lengths),
                    "image samples" if images else "text-only",
                )
                self.group_by = "length"

        if group_steps is None:
            group_steps = min(DEFAULT_GROUP_STEPS, len(self.lengths) // (self.step_size * _MIN_GROUPS))
        self.group_steps = max(1, group_steps)

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of `epoch` in the next iteration."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)

        if self.group_by == "length":
            modalities = [np.arange(len(self.lengths))]
        else:
            modalities = [np.flatnonzero(self.has_image), np.flatnonzero(~self.has_image)]

        steps: list[np.ndarray] = []
        leftovers: list[np.ndarray] = []
        for indices in modalities:
            modality_steps, leftover = self._steps(indices, generator)
            self._keep_longest_in_steps(modality_steps, leftover)
            steps += modality_steps
            leftovers.append(leftover)

        order = torch.randperm(len(steps), generator=generator).tolist()
        steps = [steps[position] for position in order]
        if steps:
            longest = max(range(len(steps)), key=lambda position: int(self.lengths[steps[position]].max()))
            steps[0], steps[longest] = steps[longest], steps[0]

        for step in steps:
            yield from step.tolist()
        for leftover in leftovers:
            yield from leftover.tolist()

    def _steps(self, indices: np.ndarray, generator: torch.Generator) -> tuple[list[np.ndarray], np.ndarray]:
        """Shuffle and length-sort `indices` into full steps, and return them with the incomplete rest."""
        shuffled = indices[torch.randperm(len(indices), generator=generator).numpy()]
        group_size = self.group_steps * self.step_size

        sorted_groups = []
        for start in range(0, len(shuffled), group_size):
            group = shuffled[start : start + group_size]
            # A stable sort keeps the shuffled order among equal lengths.
            sorted_groups.append(group[np.argsort(-self.lengths[group], kind="stable")])
        ordered = np.concatenate(sorted_groups) if sorted_groups else shuffled

        full = len(ordered) // self.step_size * self.step_size
        steps = [ordered[start : start + self.step_size].copy() for start in range(0, full, self.step_size)]
        return steps, ordered[full:].copy()

    def _keep_longest_in_steps(self, steps: list[np.ndarray], leftover: np.ndarray) -> None:
        """Swap the modality's longest sample out of the leftover, so that the first step can hold it."""
        if not steps or not len(leftover):
            return
        longest_leftover = int(np.argmax(self.lengths[leftover]))
        longest_step = max(range(len(steps)), key=lambda position: int(self.lengths[steps[position]].max()))
        if self.lengths[leftover[longest_leftover]] <= self.lengths[steps[longest_step]].max():
            return
        # Steps are sorted longest first, so the swap replaces the step's shortest sample.
        step = steps[longest_step]
        step[-1], leftover[longest_leftover] = leftover[longest_leftover], step[-1]
