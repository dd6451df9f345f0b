"""The Align-KD objective: presets, weighted terms, step normalisers and error cases."""

import pytest
import torch

from alignkd.config import ConfigError, from_mapping
from alignkd.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from alignkd.errors import ModelError
from alignkd.losses.attention import text_vision_attention_loss
from alignkd.losses.logits import token_losses
from alignkd.losses.objective import (
    AlignKDObjective,
    NonFiniteLossError,
    ObjectiveConfig,
    StepNormalizers,
)
from alignkd.losses.vision import text_focus_scores, vision_token_loss
from alignkd.models.interface import Spans, VLMOutput

VOCAB, VISION = 12, 4


def _output(heads, width, seed, rows_per_sample=(3, 2), text_rows=((True, True, False), (False, False, False))):
    """A two-sample batch: sample 0 has an image and two text queries after it; sample 1 is text-only."""
    generator = torch.Generator().manual_seed(seed)
    tokens = sum(rows_per_sample)
    row_mask = torch.tensor(text_rows)
    attention = torch.rand(2, heads, 3, VISION, generator=generator) * row_mask[:, None, :, None]
    return VLMOutput(
        logits=torch.randn(tokens, VOCAB, generator=generator),
        logit_position_mask=torch.ones(2, 3, dtype=torch.bool),
        targets=torch.tensor([1, 2, 3, 4, 5]),
        vision_tokens=torch.randn(1, VISION, width, generator=generator),
        image_sample_index=torch.tensor([0]),
        spans=Spans(torch.tensor([1, 0]), torch.tensor([5, 0]), torch.tensor([7, 3])),
        text_vision_attention=attention,
        text_vision_row_mask=row_mask,
        attention_mask=torch.ones(2, 7, dtype=torch.long),
        labels=None,
    )


def _objective(**overrides):
    config = from_mapping(ObjectiveConfig, overrides)
    return AlignKDObjective(config, teacher_heads=4, student_heads=2, teacher_width=8, student_width=6)


def test_presets_resolve():
    paper = ObjectiveConfig().resolved()
    assert (paper.divergence, paper.focus_weight, paper.top_k, paper.adapter_mode) == ("reverse_kl", 0.1, 16, "trained")
    assert paper.attention_weight == 1.0
    released = ObjectiveConfig(preset="released-code").resolved()
    assert (released.divergence, released.logit_positions, released.focus_weight) == ("teacher_ce", "all", 1.0)
    assert released.adapter_mode == "frozen"
    assert released.attention_weight == 0.0
    vanilla = ObjectiveConfig(preset="vanilla-kd").resolved()
    assert (vanilla.logit_weight, vanilla.attention_weight, vanilla.vision_weight) == (1.0, 0.0, 0.0)
    assert not ObjectiveConfig(preset="sft").resolved().needs_teacher


def test_override_beats_preset():
    resolved = from_mapping(ObjectiveConfig, {"preset": "vanilla-kd", "divergence": "jsd", "vision_weight": 0.5}).resolved()
    assert resolved.divergence == "jsd"
    assert resolved.vision_weight == 0.5


def test_unknown_key_and_bad_value():
    with pytest.raises(ConfigError, match="unknown config key 'loss.focus_wieght'.*focus_weight"):
        from_mapping(ObjectiveConfig, {"focus_wieght": 1.0}, prefix="loss")
    with pytest.raises(ConfigError, match="temperature must be positive"):
        from_mapping(ObjectiveConfig, {"temperature": 0})
    with pytest.raises(ConfigError, match="preset"):
        from_mapping(ObjectiveConfig, {"preset": "align-kd"})


def test_paper_total_is_weighted_sum():
    objective = _objective(attention_weight=0.5, vision_weight=2.0, logit_weight=0.3)
    student, teacher = _output(2, 6, seed=1), _output(4, 8, seed=2)
    result = objective(student, teacher)

    adapters = objective.adapters
    tokens = token_losses(student.logits, student.targets, teacher.logits, kd_weight=0.3)
    attention = text_vision_attention_loss(
        student.text_vision_attention, teacher.text_vision_attention, student.text_vision_row_mask, adapters.heads
    )
    scores = text_focus_scores(teacher.text_vision_attention, teacher.text_vision_row_mask)[[0]]
    vision = vision_token_loss(student.vision_tokens, teacher.vision_tokens, adapters.tokens, scores, top_k=16, focus_weight=0.1)
    expected = tokens.total + 0.5 * attention + 2.0 * vision.total

    assert result.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(result.terms) == {"sft", "logits", "attention", "vision", "vision_all", "vision_focus", "total"}
    assert result.terms["attention"].item() == pytest.approx(attention.item(), rel=1e-6)


def test_sft_preset_needs_no_teacher():
    objective = AlignKDObjective(ObjectiveConfig(preset="sft"))
    student = _output(2, 6, seed=1)
    result = objective(student)
    expected = torch.nn.functional.cross_entropy(student.logits, student.targets)
    assert result.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert objective.adapters is None


def test_no_image_batch_is_finite():
    objective = _objective()
    text_only = ((False, False, False), (False, False, False))
    student, teacher = _output(2, 6, 1, text_rows=text_only), _output(4, 8, 2, text_rows=text_only)
    for output in (student, teacher):
        output.vision_tokens = output.vision_tokens[:0]
        output.image_sample_index = output.image_sample_index[:0]
        output.text_vision_attention = output.text_vision_attention[:, :, :0]
        output.text_vision_row_mask = output.text_vision_row_mask[:, :0]
    student.logits.requires_grad_(True)

    result = objective(student, teacher)
    result.total.backward()
    assert result.terms["attention"].item() == 0.0
    assert result.terms["vision"].item() == 0.0
    # Every adapter parameter still receives a (zero) gradient, as data-parallel ranks require.
    assert all(parameter.grad is not None for parameter in objective.adapters.parameters())


def test_nan_logits_raise_before_optimizer():
    objective = _objective()
    student, teacher = _output(2, 6, 1), _output(4, 8, 2)
    student.logits[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="not finite"):
        objective(student, teacher)


def test_misaligned_rows_are_error():
    objective = _objective()
    student, teacher = _output(2, 6, 1), _output(4, 8, 2)
    teacher.targets = torch.tensor([1, 2, 3, 4, 6])
    with pytest.raises(ModelError, match="do not line up"):
        objective(student, teacher)


def test_missing_attention_is_error():
    objective = _objective()
    student, teacher = _output(2, 6, 1), _output(4, 8, 2)
    student.text_vision_attention = None
    with pytest.raises(ModelError, match="capture_attention=True"):
        objective(student, teacher)


def test_normalizers_from_unexpanded_batch():
    pad = 0
    batch = {
        # Sample 0: BOS, image, 2 tokens after it, 2 supervised. Sample 1: image last, nothing after.
        # Sample 2: text-only, 3 supervised, one padding position.
        "input_ids": torch.tensor(
            [[1, IMAGE_PLACEHOLDER_ID, 5, 6, 7], [1, 4, 4, 4, IMAGE_PLACEHOLDER_ID], [1, 5, 6, 7, pad]]
        ),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]),
        "labels": torch.tensor(
            [
                [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 6, 7],
                [IGNORE_INDEX] * 5,
                [IGNORE_INDEX, 5, 6, 7, IGNORE_INDEX],
            ]
        ),
    }
    counts = StepNormalizers.from_batch(batch, "supervised", num_vision_tokens=9)
    assert counts == StepNormalizers(supervised_tokens=5, distilled_tokens=5, attention_samples=1, image_samples=2)

    every_position = StepNormalizers.from_batch(batch, "all", num_vision_tokens=9)
    # Real lengths after expansion: 5 + 8, 5 + 8, 4; each gives one fewer shifted position.
    assert every_position.distilled_tokens == 12 + 12 + 3


def test_normalizers_add_and_round_trip():
    first = StepNormalizers(1, 2, 3, 4)
    total = first + StepNormalizers(10, 20, 30, 40)
    assert total == StepNormalizers(11, 22, 33, 44)
    assert StepNormalizers.from_tensor(total.as_tensor()) == total
