"""A stale or mismatched teacher cache is an error that names what changed."""

import copy
import json
import logging
import shutil

import pytest
from cache_helpers import build_live_run, distill_config, write_cache, write_config
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file

from alignkd.cache.format import CacheError, CacheMismatchError
from alignkd.cache.reader import CachedTeacher
from alignkd.cli import main


@pytest.fixture
def bound_parts(full_cache):
    config, folder = full_cache
    run = build_live_run(config)
    return config, folder, run


def _bind(config, folder, run, tokenizer=None):
    teacher = CachedTeacher.open(folder, config=config)
    teacher.bind("finetune", config.finetune, run.dataset, tokenizer or run.student.tokenizer)
    return teacher


def _changed_teacher(cache_setup, tmp_path):
    """A copy of the teacher folder with one weight changed slightly."""
    folder = tmp_path / "changed_teacher"
    shutil.copytree(cache_setup["teacher"], folder)
    weights_file = folder / "model.safetensors"
    weights = load_file(str(weights_file))
    name = min(weights)
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(weights_file), metadata={"format": "pt"})
    return folder


def test_changed_template_names_template(full_cache, cache_setup, tmp_path, caplog):
    _, folder = full_cache
    config = write_config(cache_setup, tmp_path / "run")
    with caplog.at_level(logging.ERROR):
        code = main(["distill", str(config), f"teacher_cache={folder}", "teacher.path=/nonexistent", "finetune.data.template=llama_2"])
    assert code == 1
    assert "template: 'v1' in the cache, 'llama_2' now" in caplog.text
    assert "system_prompt:" in caplog.text
    assert not (tmp_path / "run" / "finetune" / "COMPLETED").exists()


def test_changed_tokenizer_names_tokenizer(bound_parts):
    config, folder, run = bound_parts
    tokenizer = copy.deepcopy(run.student.tokenizer)
    tokenizer.add_tokens(["<extra_token>"])
    with pytest.raises(CacheMismatchError, match="tokenizer: hash [0-9a-f]{12} in the cache, hash [0-9a-f]{12} now") as error:
        _bind(config, folder, run, tokenizer)
    assert "template" not in str(error.value)


def test_other_tokenizer_style_names_tokenizer(bound_parts, gpt2_tokenizer):
    config, folder, run = bound_parts
    with pytest.raises(CacheMismatchError, match="tokenizer: hash"):
        _bind(config, folder, run, gpt2_tokenizer)


def test_changed_temperature_names_temperature(bound_parts):
    config, folder, run = bound_parts
    hotter = distill_config_like(config, loss={"preset": "paper", "temperature": 2.0})
    with pytest.raises(CacheMismatchError, match="temperature: '1.0' in the cache, '2.0' now"):
        _bind(hotter, folder, run)


def test_changed_max_length_names_max_length(bound_parts):
    config, folder, run = bound_parts
    longer = copy.deepcopy(config)
    longer.finetune.data.max_length = 256
    with pytest.raises(CacheMismatchError, match="max_length: '128' in the cache, '256' now"):
        _bind(longer, folder, run)


def test_missing_output_is_error(cache_setup, tmp_path):
    config = distill_config(cache_setup, tmp_path / "run", loss={"preset": "vanilla-kd"})
    folder = write_cache(config, tmp_path / "cache")
    paper = distill_config(cache_setup, tmp_path / "run")
    run = build_live_run(paper)
    with pytest.raises(CacheError, match="also reads the teacher's attention, vision_tokens"):
        _bind(paper, folder, run)


def test_changed_teacher_weights_name_teacher(full_cache, cache_setup, tmp_path):
    config, reference = full_cache
    folder = tmp_path / "cache"
    shutil.copytree(reference, folder)
    changed = copy.deepcopy(config)
    changed.teacher.path = str(_changed_teacher(cache_setup, tmp_path))
    with pytest.raises(CacheMismatchError, match="teacher: hash [0-9a-f]{12} in the cache, hash [0-9a-f]{12} now") as error:
        write_cache(changed, folder, top_k=1000, shard_megabytes=0.01)
    assert "teacher_dtype" not in str(error.value)


def test_partial_cache_checks_live_teacher(cache_setup, tmp_path, caplog):
    config = write_config(cache_setup, tmp_path / "run")
    assert main(["cache-teacher", str(config), "--out", str(tmp_path / "cache"), "--min-length", "44"]) == 0
    changed = _changed_teacher(cache_setup, tmp_path)
    with caplog.at_level(logging.ERROR):
        code = main(["distill", str(config), f"teacher_cache={tmp_path / 'cache'}", f"teacher.path={changed}"])
    assert code == 1
    assert "teacher: hash" in caplog.text
    assert "another teacher than the cached ones" in caplog.text


def test_changed_sample_under_same_id_is_error(full_cache, cache_setup, tmp_path):
    config, folder = full_cache
    samples = json.loads(cache_setup["data"].read_text())
    samples[1]["conversations"][1]["value"] = "A changed answer."
    data = tmp_path / "train.json"
    data.write_text(json.dumps(samples))
    changed = copy.deepcopy(config)
    changed.finetune.data.path = data
    changed.finetune.data.image_folder = cache_setup["data"].parent / "images"

    run = build_live_run(changed)
    teacher = _bind(changed, folder, run)
    with pytest.raises(CacheMismatchError, match="sample 'image-1' has other token ids, labels or image pixels"):
        teacher(run.batches()[0], run.settings)


def test_replaced_image_is_error(full_cache, cache_setup, tmp_path):
    config, folder = full_cache
    images = tmp_path / "images"
    shutil.copytree(cache_setup["data"].parent / "images", images)
    # Same file name, other pixels: only the sample hash can notice.
    with Image.open(images / "1.png") as image:
        ImageOps.invert(image.convert("RGB")).save(images / "1.png")
    changed = copy.deepcopy(config)
    changed.finetune.data.image_folder = images

    run = build_live_run(changed)
    teacher = _bind(changed, folder, run)
    with pytest.raises(CacheMismatchError, match="sample 'image-1' has other token ids, labels or image pixels"):
        teacher(run.batches()[0], run.settings)


def distill_config_like(config, **sections):
    from alignkd.config import from_mapping, to_mapping
    from alignkd.training.config import DistillConfig

    mapping = to_mapping(config)
    mapping.update(sections)
    return from_mapping(DistillConfig, mapping)
