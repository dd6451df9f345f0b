"""A cache of the longer samples only, with the other samples computed by the live teacher."""

import logging

import pytest
import torch
from cache_helpers import build_live_run, distill_config, write_cache
from cache_helpers import FULL_VOCABULARY_K

from alignkd.cache.format import CacheError
from alignkd.cache.keys import batch_sample_hashes
from alignkd.cache.reader import CachedTeacher, select_samples
from alignkd.config import ConfigError
from alignkd.models.forward import forward_vlm
from alignkd.training.teacher import LiveTeacher

TERMS = ["sft", "logits", "attention", "vision", "total"]


@pytest.fixture(scope="module")
def partial(cache_setup, tmp_path_factory):
    """A partial cache with k >= vocabulary, the live run, and the length threshold."""
    root = tmp_path_factory.mktemp("partial")
    config = distill_config(cache_setup, root / "run")
    run = build_live_run(config)
    threshold = int(sorted(run.dataset.lengths)[len(run.dataset) // 2])
    folder = write_cache(config, root / "cache", top_k=FULL_VOCABULARY_K, min_length=threshold)
    return config, run, folder, threshold


def _open_with_live(config, run, folder):
    teacher = CachedTeacher.open(folder, config=config)
    assert teacher.needs_live_teacher
    teacher.attach_live_teacher(LiveTeacher(run.teacher.model), run.teacher)
    teacher.bind("finetune", config.finetune, run.dataset, run.student.tokenizer)
    return teacher


def test_mixed_batches_match_live_teacher(partial):
    config, run, folder, threshold = partial
    teacher = _open_with_live(config, run, folder)
    live = run.live_teacher()
    mixed = 0
    for batch in run.batches():
        lengths = run.dataset.lengths[[list(run.dataset.rows).index(row) for row in batch["sample_index"].tolist()]]
        mixed += int((lengths >= threshold).any() and (lengths < threshold).any())
        with torch.no_grad():
            student = forward_vlm(
                run.student.model,
                batch["input_ids"],
                batch["attention_mask"],
                labels=batch["labels"],
                pixel_values=batch["pixel_values"],
                image_mask=batch["image_mask"],
                capture_attention=True,
            )
        live_terms = run.objective(student, live(batch, run.settings)).terms
        cached_terms = run.objective(student, teacher(batch, run.settings)).terms
        for name in TERMS:
            assert cached_terms[name].item() == pytest.approx(live_terms[name].item(), rel=1e-3), name
    assert mixed > 0


def test_partial_without_teacher_path_is_error(partial):
    config, _, folder, _ = partial
    config = distill_config_without_teacher(config)
    with pytest.raises(ConfigError, match="set teacher.path"):
        CachedTeacher.open(folder, config=config)


def test_partial_without_live_teacher_is_error(partial):
    config, run, folder, _ = partial
    teacher = CachedTeacher.open(folder, config=config)
    with pytest.raises(CacheError, match="no live teacher was attached"):
        teacher.bind("finetune", config.finetune, run.dataset, run.student.tokenizer)


def test_bind_reports_cached_count(partial, caplog):
    config, run, folder, threshold = partial
    expected = int((run.dataset.lengths >= threshold).sum())
    with caplog.at_level(logging.INFO, logger="alignkd.cache.reader"):
        _open_with_live(config, run, folder)
    assert f"{expected} of {len(run.dataset)} training samples are cached" in caplog.text


def test_select_samples_keeps_their_images(partial):
    _, run, _, _ = partial
    batch = run.batches()[0]
    image_rows = batch["image_mask"].nonzero().flatten().tolist()
    chosen = [row for row in range(batch["input_ids"].shape[0]) if row != image_rows[0]]
    selected = select_samples(batch, chosen)

    assert selected["input_ids"].shape[0] == len(chosen)
    assert torch.equal(selected["pixel_values"], batch["pixel_values"][1 : len(image_rows)])
    assert batch_sample_hashes(selected) == [batch_sample_hashes(batch)[row] for row in chosen]
    longest = int(batch["attention_mask"][chosen].sum(dim=1).max())
    assert selected["input_ids"].shape[1] == longest


def distill_config_without_teacher(config):
    from alignkd.config import from_mapping, to_mapping
    from alignkd.training.config import DistillConfig

    mapping = to_mapping(config)
    mapping["teacher"] = None
    mapping["teacher_cache"] = "unused"
    return from_mapping(DistillConfig, mapping)
