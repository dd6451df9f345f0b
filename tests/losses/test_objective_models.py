"""The objective on real tiny models: where gradients go, positions, layouts and precision."""

from __future__ import annotations

import pytest
import torch

from alignkd.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from alignkd.losses.objective import AlignKDObjective, ObjectiveConfig
from alignkd.models.forward import forward_vlm
from alignkd.models.loading import get_vlm_adapter
from alignkd.models.spec import init_model

VISION = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "patch_size": 8, "image_size": 32}


def _spec(hidden, heads, kv_heads=None, layers=2):
    return {
        "family": "mobilevlm",
        "vision": VISION,
        "projector": {"type": "ldpnetv2", "grid_size": 2},
        "language": {
            "hidden_size": hidden,
            "num_layers": layers,
            "num_heads": heads,
            "num_key_value_heads": kv_heads,
            "intermediate_size": 2 * hidden,
        },
    }


@pytest.fixture(scope="module")
def models(llama_tokenizer):
    teacher = init_model(_spec(64, 4), llama_tokenizer, seed=1).model.eval()
    student = init_model(_spec(32, 2, kv_heads=1), llama_tokenizer, seed=2).model.train()
    return teacher, student


def _batch(layouts, seed=0):
    """Right-padded unexpanded batch. Each layout: (tokens before image or None, tokens after, answer tokens)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for before, after, answer in layouts:
        ids = [1] + list(range(10, 10 + (before or 0)))
        if before is not None:
            ids.append(IMAGE_PLACEHOLDER_ID)
        ids += list(range(40, 40 + after))
        prompt_length = len(ids)
        ids += list(range(70, 70 + answer))
        labels = [IGNORE_INDEX] * prompt_length + ids[prompt_length:]
        rows.append((ids, labels, before is not None))
    length = max(len(ids) for ids, _, _ in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for index, (ids, row_labels, _) in enumerate(rows):
        input_ids[index, : len(ids)] = torch.tensor(ids)
        labels[index, : len(ids)] = torch.tensor(row_labels)
        mask[index, : len(ids)] = 1
    image_mask = torch.tensor([has_image for _, _, has_image in rows])
    pixel_values = torch.rand(int(image_mask.sum()), 3, 32, 32, generator=generator)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "image_mask": image_mask, "pixel_values": pixel_values}


def _outputs(teacher, student, batch, settings):
    with torch.no_grad():
        teacher_out = forward_vlm(
            teacher, **batch, logit_positions=settings.teacher_logit_positions, capture_attention=settings.capture_teacher_attention
        )
    student_out = forward_vlm(
        student, **batch, logit_positions=settings.student_logit_positions, capture_attention=settings.capture_student_attention
    )
    return student_out, teacher_out


def _objective(teacher, student, **overrides):
    config = ObjectiveConfig(**overrides)
    teacher_adapter, student_adapter = get_vlm_adapter(teacher), get_vlm_adapter(student)
    return AlignKDObjective(
        config,
        teacher_heads=teacher_adapter.num_attention_heads,
        student_heads=student_adapter.num_attention_heads,
        teacher_width=teacher_adapter.hidden_size,
        student_width=student_adapter.hidden_size,
    )


def test_attention_term_trains_first_layer_query_key(models):
    teacher, student = models
    objective = _objective(teacher, student, sft_weight=0.0, logit_weight=0.0, vision_weight=0.0)
    batch = _batch([(2, 3, 2), (0, 4, 1)])
    student_out, teacher_out = _outputs(teacher, student, batch, objective.settings)
    student.zero_grad()
    objective(student_out, teacher_out).total.backward()

    layers = get_vlm_adapter(student).decoder.layers
    first = layers[0].self_attn
    assert first.q_proj.weight.grad.abs().sum() > 0
    assert first.k_proj.weight.grad.abs().sum() > 0
    # Values, outputs, MLPs, later layers and the head do not shape layer-0 probabilities.
    untouched = [first.v_proj, first.o_proj, layers[0].mlp, layers[1], student.lm_head]
    for module in untouched:
        for name, parameter in module.named_parameters():
            assert parameter.grad is None or parameter.grad.abs().sum() == 0, name


def test_logit_terms_cover_shifted_answers(models):
    # One sample, 5 prompt tokens (BOS, 2 text, image, 1 text) and 3 answer tokens.
    teacher, student = models
    objective = _objective(teacher, student, preset="vanilla-kd")
    batch = _batch([(2, 1, 3)])
    student_out, teacher_out = _outputs(teacher, student, batch, objective.settings)
    assert student_out.logits.shape[0] == 3
    assert teacher_out.logits.shape[0] == 3
    # The rows are the positions just before each answer token, whose targets are the answers.
    assert student_out.targets.tolist() == [70, 71, 72]
    assert torch.equal(student_out.targets, teacher_out.targets)
    expanded_answer_start = int(student_out.spans.vision_end[0]) + 1
    positions = student_out.logit_position_mask[0].nonzero().flatten().tolist()
    assert positions == [expanded_answer_start - 1, expanded_answer_start, expanded_answer_start + 1]


def test_batch_matches_mean_of_samples(models):
    teacher, student = models
    objective = _objective(teacher, student, sft_weight=0.0, logit_weight=0.0)
    layouts = [(0, 3, 2), (4, 1, 3), (2, 5, 1)]  # images at different positions
    batch_out = objective(*_outputs(teacher, student, _batch(layouts), objective.settings))

    singles = []
    for index, layout in enumerate(layouts):
        full = _batch(layouts)
        sample = {key: value[index : index + 1] for key, value in full.items() if key != "pixel_values"}
        sample["pixel_values"] = full["pixel_values"][index : index + 1]
        singles.append(objective(*_outputs(teacher, student, sample, objective.settings)))

    for term in ("attention", "vision"):
        mean = sum(float(single.terms[term]) for single in singles) / len(singles)
        assert float(batch_out.terms[term]) == pytest.approx(mean, rel=1e-5), term


def test_padding_and_text_only_rows_change_nothing(models):
    teacher, student = models
    objective = _objective(teacher, student)
    alone = _batch([(1, 3, 2)])
    mixed = _batch([(1, 3, 2), (None, 6, 4), (0, 0, 0)])
    mixed["pixel_values"][0] = alone["pixel_values"][0]
    mixed["pixel_values"][1] = alone["pixel_values"][0]

    single = objective(*_outputs(teacher, student, alone, objective.settings))
    batched = objective(*_outputs(teacher, student, mixed, objective.settings))
    # The third sample is an image with nothing after it: no attention or focus term for it.
    # Its vision tokens (the same image) count in the all-token term, so only attention is compared.
    assert float(batched.terms["attention"]) == pytest.approx(float(single.terms["attention"]), rel=1e-5)
    assert torch.isfinite(batched.total)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gradients_finite(llama_tokenizer, dtype):
    teacher = init_model(_spec(64, 4), llama_tokenizer, seed=1).model.to(dtype).eval()
    student = init_model(_spec(32, 2), llama_tokenizer, seed=2).model.to(dtype).train()
    objective = _objective(teacher, student)
    batch = _batch([(2, 3, 2), (None, 2, 2)])
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    result = objective(*_outputs(teacher, student, batch, objective.settings))
    result.total.backward()
    assert torch.isfinite(result.total)
    for name, parameter in student.named_parameters():
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad.float()).all(), name
    for name, parameter in objective.adapters.named_parameters():
        assert torch.isfinite(parameter.grad.float()).all(), name
