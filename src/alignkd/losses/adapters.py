"""Adapters that map teacher-side tensors into the student's shapes.

- `HeadAdapter`: a 1x1 convolution over the head axis of an attention block, that is, one
  learned linear mix of the teacher's heads (with bias) per student head, the same at every
  (query, key) cell.
- `TokenAdapter`: a per-token linear map from the teacher's vision-token width to the
  student's (a 1x1 convolution over the token sequence).

`AlignKDAdapters` holds both in one module, so that a single `parameters()` call gives them
to the optimizer and a single `state_dict()` puts them in checkpoints.

Two modes:
- "trained" (the paper): randomly initialised from `seed` and trained with the student.
- "frozen" (the authors' released code, whose adapters never reached the optimizer): the same
  seeded random initialisation with `requires_grad=False`. The weights are saved with the
  checkpoint, so the projection is identical in every stage and after a resume.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

AdapterMode = Literal["trained", "frozen"]


class HeadAdapter(nn.Module):
    """Mix teacher attention heads into student heads.

    Maps [batch, teacher_heads, queries, keys] to [batch, student_heads, queries, keys]:
    out[:, s] = sum_t weight[s, t] * in[:, t] + bias[s].
    """

    def __init__(self, teacher_heads: int, student_heads: int):
        super().__init__()
        self.mix = nn.Linear(teacher_heads, student_heads)

    def forward(self, attention: torch.Tensor) -> torch.Tensor:
        weight = self.mix.weight.to(attention.dtype)
        bias = self.mix.bias.to(attention.dtype)
        return torch.einsum("st,btqk->bsqk", weight, attention) + bias[None, :, None, None]


class TokenAdapter(nn.Module):
    """Project teacher vision tokens to the student's width: [..., teacher_width] -> [..., student_width]."""

    def __init__(self, teacher_width: int, student_width: int):
        super().__init__()
        self.proj = nn.Linear(teacher_width, student_width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(tokens, self.proj.weight.to(tokens.dtype), self.proj.bias.to(tokens.dtype))


class AlignKDAdapters(nn.Module):
    """The teacher-to-student adapters of Align-KD in one module.

    Args:
        teacher_heads, student_heads: query heads of the first decoder layer of each model.
        teacher_width, student_width: widths of the vision tokens at each projector's output
            (the LLM hidden sizes).
        mode: "trained" or "frozen" (see the module docstring).
        seed: seeds the random initialisation, so that a run is reproducible and a frozen
            projection is the same wherever it is rebuilt.
    """

    def __init__(
        self,
        teacher_heads: int,
        student_heads: int,
        teacher_width: int,
        student_width: int,
        mode: AdapterMode = "trained",
        seed: int = 0,
    ):
        super().__init__()
        if mode not in ("trained", "frozen"):
            raise ValueError(f"adapter mode must be 'trained' or 'frozen', got {mode!r}")
        self.mode = mode

        # Build under a private generator so that the adapters do not shift the global RNG
        # stream (and with it the data order or dropout of the rest of the run).
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            self.heads = HeadAdapter(teacher_heads, student_heads)
            self.tokens = TokenAdapter(teacher_width, student_width)
        finally:
            torch.random.set_rng_state(state)

        if mode == "frozen":
            self.requires_grad_(False)

    @property
    def trainable(self) -> bool:
        return self.mode == "trained"

    def extra_repr(self) -> str:
        return f"mode={self.mode}"
