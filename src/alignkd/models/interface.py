"""What every supported VLM returns to the distiller.

A batch enters a model unexpanded: `input_ids` holds one `IMAGE_PLACEHOLDER_ID` per sample
that has an image. Each model replaces that position with its own vision tokens, so the
final sequence, and every span in it, is known only after the model's forward. `Spans`
records those positions per sample and `VLMOutput` carries them with the tensors that the
Align-KD objective needs.

Sequences in a training batch are right-padded; "real tokens" are the positions whose
attention mask is 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LogitPositions = Literal["supervised", "all", "none"]
"""Which positions of the final sequence get a row of logits.

- "supervised": positions t whose next token t+1 is supervised (label != IGNORE_INDEX), which
  are exactly the positions that the shifted cross-entropy uses.
- "all": every real position t whose next position t+1 is also a real token (image, prompt
  and answer positions alike, padding excluded), with the same shift.
- "none": no logits (for example when only the vision and attention terms are needed).
"""


@dataclass
class Spans:
    """Where each sample's image and the text after it lie in the final (expanded) sequence.

    All fields are LongTensors of shape [batch]. For a sample without an image,
    `vision_start == vision_end` and the text-after-image span is empty.

    - `vision_start`, `vision_end`: the vision tokens occupy [vision_start, vision_end).
    - `text_end`: one past the last real token, so the text after the image is
      [vision_end, text_end) for image samples.
    """

    vision_start: torch.Tensor
    vision_end: torch.Tensor
    text_end: torch.Tensor

    @property
    def has_image(self) -> torch.Tensor:
        """BoolTensor [batch]: the sample has vision tokens in its sequence."""
        return self.vision_end > self.vision_start

    @property
    def text_after_image_length(self) -> torch.Tensor:
        """LongTensor [batch]: number of text queries after the image (0 without an image)."""
        length = (self.text_end - self.vision_end).clamp(min=0)
        return torch.where(self.has_image, length, torch.zeros_like(length))

    def to(self, device: torch.device | str) -> "Spans":
        return Spans(self.vision_start.to(device), self.vision_end.to(device), self.text_end.to(device))


@dataclass
class VLMOutput:
    """The outputs of one forward of a VLM that the Align-KD objective consumes.

    Logits are packed: one row per selected position (see `LogitPositions`), in
    (sample, position) order, so teacher and student rows line up through the label mask
    even when their images expand to different numbers of vision tokens.

    Fields:
        logits: [positions, vocab] in the model's dtype, or None for "none".
        logit_position_mask: BoolTensor [batch, seq]; True where a row of `logits` was taken.
        targets: LongTensor [positions]; the next-token id at each row, or IGNORE_INDEX where
            the next token is not supervised (only possible with "all").
        vision_tokens: [images, vision_tokens, hidden]; the projector output of the samples
            that have an image, in batch order. Shape [0, vision_tokens, hidden] when none has.
        image_sample_index: LongTensor [images]; the batch row of each entry of `vision_tokens`.
        spans: the per-sample spans of the final sequence.
        text_vision_attention: fp32 [batch, heads, text, vision] or None. First decoder layer
            attention probabilities (rows: the text queries after the image, in order; columns:
            the image's vision keys), zero in rows beyond a sample's text-after-image length.
            `text` is the largest text-after-image length in the batch.
        text_vision_row_mask: BoolTensor [batch, text] or None; True for real rows of
            `text_vision_attention`.
        attention_mask: LongTensor [batch, seq] of the final sequence.
        labels: LongTensor [batch, seq] of the final sequence (IGNORE_INDEX on vision tokens).
    """

    logits: torch.Tensor | None
    logit_position_mask: torch.Tensor
    targets: torch.Tensor
    vision_tokens: torch.Tensor
    image_sample_index: torch.Tensor
    spans: Spans
    text_vision_attention: torch.Tensor | None
    text_vision_row_mask: torch.Tensor | None
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
