"""The Align-KD objective: supervised loss plus three distillation terms, with presets.

    total = sft_weight * L_sft + logit_weight * L_logits
          + attention_weight * L_attention + vision_weight * L_vision

- L_sft: next-token cross-entropy on the supervised (answer) tokens.
- L_logits: a divergence between the student's and the teacher's next-token distributions.
- L_attention: first-layer text-to-vision attention MSE through a head adapter.
- L_vision: vision-token MSE at the projector output through a width adapter, plus
  focus_weight times the MSE on the top-K text-focused tokens.

Presets (a field left as None in `ObjectiveConfig` takes the preset's value):

| preset        | sft | logits             | positions  | attention | vision | lambda | adapters |
|---------------|-----|--------------------|------------|-----------|--------|--------|----------|
| paper         | 1   | reverse KL         | supervised | 1         | 1      | 0.1    | trained  |
| released-code | 1   | teacher cross-ent. | all        | 0         | 1      | 1.0    | frozen   |
| vanilla-kd    | 1   | reverse KL         | supervised | 0         | 0      | -      | -        |
| sft           | 1   | -                  | -          | 0         | 0      | -      | -        |

"released-code" follows the authors' published training code where it is well defined: the
cross-entropy against the teacher's distribution over every non-padding position, adapters
that are random and never trained, and lambda = 1. Its attention term selects vision-query x
text-key cells, which are exactly zero under causal attention, so it contributes nothing; we
do not reproduce that mask and give the term weight 0 instead, which has the same effect on
training. Also unlike that code: logits are compared in fp32 (not fp16), padding positions are
excluded, positions come from each sample's spans (not from a fixed offset), and text-only
samples contribute no vision terms (the code distils a zero image for them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, Mapping

import torch
from torch import nn

from alignkd.config import ConfigError
from alignkd.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from alignkd.errors import AlignKDError, ModelError
from alignkd.losses.adapters import AdapterMode, AlignKDAdapters
from alignkd.losses.attention import text_vision_attention_loss
from alignkd.losses.divergence import Divergence
from alignkd.losses.logits import token_losses
from alignkd.losses.topk import topk_token_losses
from alignkd.losses.vision import text_focus_scores, vision_token_loss
from alignkd.models.interface import VLMOutput

logger = logging.getLogger(__name__)

Preset = Literal["paper", "released-code", "vanilla-kd", "sft"]

PRESETS: dict[str, dict[str, object]] = {
    "paper": {
        "sft_weight": 1.0,
        "logit_weight": 1.0,
        "attention_weight": 1.0,
        "vision_weight": 1.0,
        "divergence": "reverse_kl",
        "logit_positions": "supervised",
        "focus_weight": 0.1,
        "adapter_mode": "trained",
    },
    "released-code": {
        "sft_weight": 1.0,
        "logit_weight": 1.0,
        "attention_weight": 0.0,
        "vision_weight": 1.0,
        "divergence": "teacher_ce",
        "logit_positions": "all",
        "focus_weight": 1.0,
        "adapter_mode": "frozen",
    },
    "vanilla-kd": {
        "sft_weight": 1.0,
        "logit_weight": 1.0,
        "attention_weight": 0.0,
        "vision_weight": 0.0,
        "divergence": "reverse_kl",
        "logit_positions": "supervised",
        "focus_weight": 0.1,
        "adapter_mode": "trained",
    },
    "sft": {
        "sft_weight": 1.0,
        "logit_weight": 0.0,
        "attention_weight": 0.0,
        "vision_weight": 0.0,
        "divergence": "reverse_kl",
        "logit_positions": "supervised",
        "focus_weight": 0.1,
        "adapter_mode": "trained",
    },
}


@dataclass
class ObjectiveConfig:
    """Weights and settings of the Align-KD objective (the `loss:` section of a config)."""

    preset: Preset = "paper"
    """Starting point for every field left as null below."""

    sft_weight: float | None = None
    """Weight of the supervised next-token cross-entropy."""

    logit_weight: float | None = None
    """Weight of the logit distillation term."""

    attention_weight: float | None = None
    """Weight of the first-layer text-to-vision attention term."""

    vision_weight: float | None = None
    """Weight of the vision-token term (all tokens plus focus_weight times the top-K tokens)."""

    divergence: Divergence | None = None
    """reverse_kl (paper), forward_kl, jsd, or teacher_ce (released code)."""

    jsd_beta: float = 0.5
    """Interpolation of the generalised JSD: beta * KL(teacher || m) + (1 - beta) * KL(student || m)."""

    temperature: float = 1.0
    """Softens both distributions of the logit term; the term is scaled by temperature^2."""

    logit_positions: Literal["supervised", "all"] | None = None
    """Positions of the logit term: the supervised answer tokens, or all non-padding positions."""

    top_k: int = 16
    """Vision tokens per image in the focus term, clipped to the number of vision tokens."""

    focus_weight: float | None = None
    """lambda: weight of the top-K focus MSE inside the vision term."""

    adapter_mode: AdapterMode | None = None
    """trained (paper): adapters learn with the student; frozen (released code): a fixed seeded projection."""

    adapter_seed: int = 0
    """Seed of the adapters' random initialisation."""

    chunk_size: int | None = None
    """Token rows per fp32 chunk of the logit losses; null sizes chunks to about 2M values (65 rows
    for a 32,000-token vocabulary)."""

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 < self.jsd_beta < 1.0:
            raise ConfigError(f"jsd_beta must lie strictly between 0 and 1, got {self.jsd_beta}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be 0 or more, got {self.top_k}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be at least 1, got {self.chunk_size}")
        for name in ("sft_weight", "logit_weight", "attention_weight", "vision_weight", "focus_weight"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be 0 or more, got {value}")

    def resolved(self) -> "ResolvedObjective":
        """Fill every null field that the preset sets from the preset."""
        preset = PRESETS[self.preset]
        values = {}
        for name in ResolvedObjective.__dataclass_fields__:
            own = getattr(self, name)
            values[name] = preset[name] if own is None and name in preset else own
        return ResolvedObjective(**values)


@dataclass(frozen=True)
class ResolvedObjective:
    """An `ObjectiveConfig` with every preset value filled in."""

    preset: str
    sft_weight: float
    logit_weight: float
    attention_weight: float
    vision_weight: float
    divergence: str
    jsd_beta: float
    temperature: float
    logit_positions: str
    top_k: int
    focus_weight: float
    adapter_mode: str
    adapter_seed: int
    chunk_size: int | None

    @property
    def needs_teacher(self) -> bool:
        return self.logit_weight > 0 or self.attention_weight > 0 or self.vision_weight > 0

    @property
    def needs_adapters(self) -> bool:
        return self.attention_weight > 0 or self.vision_weight > 0

    @property
    def capture_student_attention(self) -> bool:
        return self.attention_weight > 0

    @property
    def capture_teacher_attention(self) -> bool:
        focus = self.vision_weight > 0 and self.focus_weight > 0 and self.top_k > 0
        return self.attention_weight > 0 or focus

    @property
    def student_logit_positions(self) -> str:
        # The cross-entropy needs only the supervised rows; "all" adds the other positions.
        return self.logit_positions if self.logit_weight > 0 else "supervised"

    @property
    def teacher_logit_positions(self) -> str:
        return self.logit_positions if self.logit_weight > 0 else "none"


@dataclass
class StepNormalizers:
    """Divisors of each term: item counts summed over every micro-batch and rank of one optimizer step.

    Fields:
        supervised_tokens: rows of the cross-entropy (supervised next tokens).
        distilled_tokens: rows of the logit term (equal to supervised_tokens with "supervised" positions).
        attention_samples: samples with an image and at least one text token after it.
        image_samples: samples with an image.
    """

    supervised_tokens: float = 0.0
    distilled_tokens: float = 0.0
    attention_samples: float = 0.0
    image_samples: float = 0.0

    def __add__(self, other: "StepNormalizers") -> "StepNormalizers":
        return StepNormalizers(
            *(getattr(self, name) + getattr(other, name) for name in self.__dataclass_fields__)
        )

    def as_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.tensor([getattr(self, name) for name in self.__dataclass_fields__], dtype=torch.float64, device=device)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> "StepNormalizers":
        return cls(*(float(value) for value in values.tolist()))

    @classmethod
    def from_batch(
        cls, batch: Mapping[str, torch.Tensor], logit_positions: str, num_vision_tokens: int
    ) -> "StepNormalizers":
        """Count the items of one unexpanded training batch (see the data collator's output).

        Counting happens before the forward, so the trainer can sum the counts of all
        micro-batches of a step first. The counts equal those of the expanded sequence: vision
        positions are never supervised, and each image adds `num_vision_tokens - 1` positions.
        """
        labels = batch["labels"]
        attention_mask = batch["attention_mask"].bool()
        supervised = (labels[:, 1:] != IGNORE_INDEX).sum()

        placeholder = batch["input_ids"] == IMAGE_PLACEHOLDER_ID
        has_image = placeholder.any(dim=1)
        # Real tokens after the placeholder are the text queries after the image.
        after_placeholder = placeholder.long().cumsum(dim=1).bool() & ~placeholder
        text_after = (after_placeholder & attention_mask).sum(dim=1)
        attention_samples = (has_image & (text_after > 0)).sum()

        if logit_positions == "all":
            real = attention_mask.sum(dim=1) + has_image.long() * (num_vision_tokens - 1)
            distilled = (real - 1).clamp(min=0).sum()
        else:
            distilled = supervised

        return cls(float(supervised), float(distilled), float(attention_samples), float(has_image.sum()))


@dataclass
class ObjectiveOutput:
    """The differentiable total and every named term (detached, unweighted) for logging."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class NonFiniteLossError(AlignKDError, FloatingPointError):
    """The objective produced NaN or infinity; raised before anything reaches the optimizer."""


class AlignKDObjective(nn.Module):
    """Combine the supervised loss and the Align-KD terms; owns the adapters.

    Args:
        config: the objective's settings (a preset plus overrides).
        teacher_heads, student_heads: query heads of the first decoder layer of each model.
        teacher_width, student_width: width of each model's vision tokens (LLM hidden size).
        tokenizer_length: the shared tokenizer's length, used to cut vocabulary padding rows.
    """

    def __init__(
        self,
        config: ObjectiveConfig | ResolvedObjective,
        *,
        teacher_heads: int | None = None,
        student_heads: int | None = None,
        teacher_width: int | None = None,
        student_width: int | None = None,
        tokenizer_length: int | None = None,
    ):
        super().__init__()
        self.settings = config.resolved() if isinstance(config, ObjectiveConfig) else config
        self.tokenizer_length = tokenizer_length

        self.adapters: AlignKDAdapters | None = None
        if self.settings.needs_adapters:
            sizes = {
                "teacher_heads": teacher_heads,
                "student_heads": student_heads,
                "teacher_width": teacher_width,
                "student_width": student_width,
            }
            missing = [name for name, value in sizes.items() if value is None]
            if missing:
                raise ValueError(f"the attention and vision terms need the model sizes {', '.join(missing)}")
            self.adapters = AlignKDAdapters(
                **sizes, mode=self.settings.adapter_mode, seed=self.settings.adapter_seed
            )

    def forward(
        self,
        student: VLMOutput,
        teacher: VLMOutput | None = None,
        normalizers: StepNormalizers | None = None,
    ) -> ObjectiveOutput:
        """Compute every term from the two models' outputs.

        `normalizers` are the step totals (see `StepNormalizers`); without them each term is
        normalised by its own counts in this batch.
        """
        settings = self.settings
        if settings.needs_teacher and teacher is None:
            raise ValueError(f"the '{settings.preset}' objective needs the teacher's outputs")

        terms: dict[str, torch.Tensor] = {}
        total = self._token_terms(student, teacher, normalizers, terms)

        if settings.attention_weight > 0:
            attention = self._attention_term(student, teacher, normalizers)
            terms["attention"] = attention.detach()
            total = total + settings.attention_weight * attention

        if settings.vision_weight > 0:
            vision = self._vision_term(student, teacher, normalizers)
            terms["vision"] = vision.total.detach()
            terms["vision_all"] = vision.all_tokens
            terms["vision_focus"] = vision.focus_tokens
            total = total + settings.vision_weight * vision.total

        if self.adapters is not None and self.adapters.trainable:
            # Every rank must produce the same set of gradients every step, also when its batch
            # has nothing to distil. A zero-weighted touch keeps the adapters in the graph.
            total = total + sum(parameter.sum() for parameter in self.adapters.parameters()) * 0.0

        if not torch.isfinite(total.detach()).all():
            values = ", ".join(f"{name}={float(value):.6g}" for name, value in terms.items())
            raise NonFiniteLossError(f"the Align-KD objective is not finite ({values}); the optimizer step was not taken")

        terms["total"] = total.detach()
        return ObjectiveOutput(total=total, terms=terms)

    def _token_terms(self, student, teacher, normalizers, terms) -> torch.Tensor:
        settings = self.settings
        if student.logits is None:
            raise ModelError("the student's forward returned no logits; call it with logit_positions set")

        teacher_logits = None
        # A cached teacher (alignkd.cache) gives top-k log-probabilities instead of logits.
        teacher_topk = getattr(teacher, "topk_logits", None) if settings.logit_weight > 0 else None
        if teacher_topk is not None:
            if teacher_topk.rows != student.logits.shape[0] or not torch.equal(teacher.targets, student.targets):
                raise ModelError(
                    f"cached teacher and student logit rows do not line up (teacher {teacher_topk.rows} rows, "
                    f"student {student.logits.shape[0]}); the cache must be written with the run's logit_positions "
                    "and data"
                )
        elif settings.logit_weight > 0:
            if teacher.logits is None:
                raise ModelError("the teacher's forward returned no logits; call it with logit_positions set")
            if teacher.logits.shape[0] != student.logits.shape[0] or not torch.equal(teacher.targets, student.targets):
                raise ModelError(
                    f"teacher and student logit rows do not line up (teacher {teacher.logits.shape[0]} rows, "
                    f"student {student.logits.shape[0]}); with logit_positions='all' both models must expand "
                    "images to the same number of vision tokens, and both must see the same text"
                )
            teacher_logits = teacher.logits

        distill_mask = None
        if settings.logit_positions == "all":
            distill_mask = torch.ones_like(student.targets, dtype=torch.bool)

        loss_function = token_losses if teacher_topk is None else topk_token_losses
        losses = loss_function(
            student.logits,
            student.targets,
            teacher_logits if teacher_topk is None else teacher_topk,
            distill_mask,
            ce_weight=settings.sft_weight,
            kd_weight=settings.logit_weight,
            divergence=settings.divergence,
            beta=settings.jsd_beta,
            temperature=settings.temperature,
            ce_normalizer=None if normalizers is None else normalizers.supervised_tokens,
            kd_normalizer=None if normalizers is None else normalizers.distilled_tokens,
            tokenizer_length=self.tokenizer_length,
            chunk_size=settings.chunk_size,
        )
        terms["sft"] = losses.cross_entropy
        if settings.logit_weight > 0:
            terms["logits"] = losses.distillation
        return losses.total

    def _attention_term(self, student, teacher, normalizers) -> torch.Tensor:
        if student.text_vision_attention is None or teacher.text_vision_attention is None:
            raise ModelError(
                "the attention term needs the first-layer attention of both models; "
                "call forward_vlm with capture_attention=True"
            )
        if not torch.equal(student.text_vision_row_mask, teacher.text_vision_row_mask):
            raise ModelError(
                "teacher and student have different text-after-image spans; both must see the same text tokens"
            )
        return text_vision_attention_loss(
            student.text_vision_attention,
            teacher.text_vision_attention,
            student.text_vision_row_mask,
            self.adapters.heads,
            normalizer=None if normalizers is None else normalizers.attention_samples,
        )

    def _vision_term(self, student, teacher, normalizers):
        settings = self.settings
        if not torch.equal(student.image_sample_index, teacher.image_sample_index):
            raise ModelError("teacher and student encoded images for different samples of the batch")

        focus_scores = None
        has_text = None
        if settings.focus_weight > 0 and settings.top_k > 0:
            if teacher.text_vision_attention is None:
                raise ModelError(
                    "the focus part of the vision term ranks vision tokens by the teacher's first-layer "
                    "attention; call the teacher's forward with capture_attention=True"
                )
            scores = text_focus_scores(teacher.text_vision_attention, teacher.text_vision_row_mask)
            focus_scores = scores[teacher.image_sample_index]
            has_text = teacher.text_vision_row_mask.any(dim=1)[teacher.image_sample_index]

        return vision_token_loss(
            student.vision_tokens,
            teacher.vision_tokens,
            self.adapters.tokens,
            focus_scores,
            has_text,
            top_k=settings.top_k,
            focus_weight=settings.focus_weight,
            normalizer=None if normalizers is None else normalizers.image_samples,
        )
