"""The frozen teacher: loading, freezing, and running it on a training batch.

A teacher source turns a collated batch into the teacher's `VLMOutput`. `LiveTeacher` runs a
model; a cached teacher (see `alignkd.cache`) reads stored outputs instead. Either way, the
teacher computes no loss: the labels only choose which rows of logits it returns.
"""

from __future__ import annotations

import logging
from typing import Mapping, Protocol

import torch
from torch import nn

from alignkd.errors import ModelError
from alignkd.losses.objective import ResolvedObjective
from alignkd.models.forward import forward_vlm
from alignkd.models.interface import VLMOutput

logger = logging.getLogger(__name__)


class TeacherSource(Protocol):
    """Anything that gives the teacher's outputs for a batch."""

    def __call__(self, batch: Mapping[str, torch.Tensor], settings: ResolvedObjective) -> VLMOutput: ...


def freeze(model: nn.Module) -> nn.Module:
    """Put `model` in eval mode and turn off gradients for every parameter."""
    model.eval()
    model.requires_grad_(False)
    return model


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating-point parameters (the first one found)."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


def model_device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def teacher_input_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, num_embeddings: int) -> torch.Tensor:
    """Return `input_ids` [batch, seq] with ids the teacher has no embedding for removed from padding.

    The batch is tokenized with the student's tokenizer, which may append special tokens such as
    LLaVA's `<pad>` after the ids it shares with the teacher (see `shared_tokenizer_length`).
    At padding positions any id inside the teacher's vocabulary will do, because the attention
    mask hides them.

    Raises:
        ModelError: such an id sits at a position that is not padding.
    """
    unknown = input_ids >= num_embeddings
    if not unknown.any():
        return input_ids

    in_text = unknown & attention_mask.bool()
    if in_text.any():
        row, position = in_text.nonzero()[0].tolist()
        raise ModelError(
            f"batch row {row} contains token id {int(input_ids[row, position])} at position {position}, but the teacher "
            f"has only {num_embeddings} token embeddings. Special tokens that only the student's tokenizer has "
            "must not appear in the text"
        )
    return input_ids.masked_fill(unknown, 0)


class LiveTeacher:
    """Run a frozen teacher model under `torch.no_grad` on each batch.

    The teacher sees the same token ids as the student and its own pixel values
    (`teacher_pixel_values` when its image processor differs), cast to its own dtype.
    """

    def __init__(self, model: nn.Module):
        self.model = freeze(model)
        self._checked = False

    def _check_parameters(self) -> None:
        # Under DeepSpeed ZeRO-3, a model built inside zero.Init and not wrapped in an engine
        # holds empty placeholder parameters; its forward would fail deep in the embedding.
        empty = [name for name, parameter in self.model.named_parameters() if parameter.numel() == 0]
        if empty and not hasattr(self.model, "ds_id") and not getattr(self.model, "_alignkd_zero3_engine", False):
            raise ModelError(
                f"the teacher has {len(empty)} empty (partitioned) parameters, for example '{empty[0]}'. Under "
                "DeepSpeed ZeRO-3 the teacher must be prepared as an inference engine (alignkd does this when "
                "the run's deepspeed config is set); do not build it inside zero.Init yourself"
            )
        self._checked = True

    def __call__(self, batch: Mapping[str, torch.Tensor], settings: ResolvedObjective) -> VLMOutput:
        if not self._checked:
            self._check_parameters()

        dtype = model_dtype(self.model)
        pixel_values = batch.get("teacher_pixel_values")
        if pixel_values is None:
            pixel_values = batch.get("pixel_values")
        if pixel_values is not None:
            pixel_values = pixel_values.to(dtype)

        # num_embeddings stays the full size under ZeRO-3, where the weight itself is partitioned.
        num_embeddings = self.model.get_input_embeddings().num_embeddings
        input_ids = teacher_input_ids(batch["input_ids"], batch["attention_mask"], num_embeddings)

        with torch.no_grad():
            return forward_vlm(
                self.model,
                input_ids,
                batch["attention_mask"],
                labels=batch.get("labels"),
                pixel_values=pixel_values,
                image_mask=batch.get("image_mask"),
                logit_positions=settings.teacher_logit_positions,
                capture_attention=settings.capture_teacher_attention,
            )
