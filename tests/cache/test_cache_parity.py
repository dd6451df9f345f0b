"""Losses from a cached teacher against losses from the live teacher on the same batches."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from cache_helpers import (
    LiveRun,
    build_live_run,
    distill_config,
    with_settings,
    write_cache,
)
from cache_helpers import FULL_VOCABULARY_K

from alignkd.cache.reader import CachedTeacher
from alignkd.models.forward import forward_vlm

DIVERGENCES = ["reverse_kl", "forward_kl", "jsd", "teacher_ce"]
TERMS = ["sft", "logits", "attention", "vision", "total"]

# (logit positions, temperature) of each cache; "all" also covers image and prompt rows.
CACHE_MODES = [("supervised", 1.0), ("all", 2.0)]


@dataclass
class ParityCase:
    """One cache mode's run, with every batch's student and teacher outputs computed once."""

    run: LiveRun
    folders: dict[str, Path]
    batches: list[dict]
    students: list
    live: list
    cached: dict[str, list]


@pytest.fixture(scope="module", params=CACHE_MODES, ids=[mode for mode, _ in CACHE_MODES])
def parity(request, cache_setup, tmp_path_factory):
    positions, temperature = request.param
    root = tmp_path_factory.mktemp(f"parity_{positions}")
    config = distill_config(
        cache_setup, root / "run", loss={"preset": "paper", "logit_positions": positions, "temperature": temperature}
    )
    folders = {"small": write_cache(config, root / "small_k"), "full": write_cache(config, root / "full_k", top_k=FULL_VOCABULARY_K)}
    run = build_live_run(config)
    batches = run.batches()
    live = run.live_teacher()
    teachers = {name: _open(run, folder) for name, folder in folders.items()}
    with torch.no_grad():
        students = [_student_output(run, batch) for batch in batches]
    return ParityCase(
        run=run,
        folders=folders,
        batches=batches,
        students=students,
        live=[live(batch, run.settings) for batch in batches],
        cached={name: [teacher(batch, run.settings) for batch in batches] for name, teacher in teachers.items()},
    )


def _student_output(run, batch):
    settings = run.settings
    return forward_vlm(
        run.student.model,
        batch["input_ids"],
        batch["attention_mask"],
        labels=batch["labels"],
        pixel_values=batch["pixel_values"],
        image_mask=batch["image_mask"],
        logit_positions=settings.student_logit_positions,
        capture_attention=settings.capture_student_attention,
    )


def _open(run, folder):
    teacher = CachedTeacher.open(folder, config=run.config)
    teacher.bind("finetune", run.config.finetune, run.dataset, run.student.tokenizer)
    return teacher


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_full_k_matches_live_teacher(parity, divergence):
    objective = parity.run.objective
    objective.settings = with_settings(parity.run.settings, divergence=divergence)
    for student, live, cached in zip(parity.students, parity.live, parity.cached["full"]):
        live_terms = objective(student, live).terms
        cached_terms = objective(student, cached).terms
        for name in TERMS:
            assert cached_terms[name].item() == pytest.approx(live_terms[name].item(), rel=1e-3), name


def test_full_k_gradients_match_live(parity):
    run = parity.run
    run.objective.settings = run.settings
    gradients = []
    for teacher_output in (parity.live[0], parity.cached["full"][0]):
        run.student.model.zero_grad()
        total = run.objective(_student_output(run, parity.batches[0]), teacher_output).total
        total.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in run.student.model.parameters() if p.grad is not None]))
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_default_k_bounds_live_loss(parity, divergence):
    objective = parity.run.objective
    objective.settings = with_settings(parity.run.settings, divergence=divergence)
    for student, live, cached in zip(parity.students, parity.live, parity.cached["small"]):
        live_terms = objective(student, live).terms
        cached_terms = objective(student, cached).terms
        # Merging the tokens outside the top k into one bucket can only lower the divergence.
        assert cached_terms["logits"].item() <= live_terms["logits"].item() * (1 + 1e-5)
        assert cached_terms["sft"].item() == pytest.approx(live_terms["sft"].item(), rel=1e-6)
        assert cached_terms["attention"].item() == pytest.approx(live_terms["attention"].item(), rel=1e-3)


def test_cached_output_layout_matches_live(parity):
    for live, cached in zip(parity.live, parity.cached["full"]):
        assert torch.equal(cached.targets, live.targets)
        assert torch.equal(cached.logit_position_mask, live.logit_position_mask)
        assert torch.equal(cached.image_sample_index, live.image_sample_index)
        assert torch.equal(cached.text_vision_row_mask, live.text_vision_row_mask)
        assert torch.equal(cached.attention_mask, live.attention_mask)
        for field in ("vision_start", "vision_end", "text_end"):
            assert torch.equal(getattr(cached.spans, field), getattr(live.spans, field)), field
        torch.testing.assert_close(cached.vision_tokens, live.vision_tokens.float(), rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(cached.text_vision_attention, live.text_vision_attention, rtol=1e-3, atol=1e-4)
