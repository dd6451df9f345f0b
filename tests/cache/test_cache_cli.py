"""`alignkd cache-teacher` and `alignkd distill` with `teacher_cache:` end to end."""

import json
import logging

import pytest
from cache_helpers import write_config
from cache_helpers import FULL_VOCABULARY_K

from alignkd.cli import main

STEPS = ["finetune.optimization.max_steps=3"]


def _losses(run_dir):
    history = json.loads((run_dir / "finetune" / "log_history.json").read_text())
    return [entry["loss"] for entry in history if "loss" in entry]


@pytest.fixture(scope="module")
def live_losses(cache_setup, tmp_path_factory):
    """Loss of each step of a distill run with the live teacher."""
    output = tmp_path_factory.mktemp("live") / "run"
    assert main(["distill", str(write_config(cache_setup, output)), *STEPS]) == 0
    return _losses(output)


def test_distill_without_teacher_matches_live(cache_setup, tmp_path, live_losses, capsys):
    output = tmp_path / "run"
    config = write_config(cache_setup, output)
    cache = tmp_path / "cache"
    assert main(["cache-teacher", str(config), "--out", str(cache), "--top-k", str(FULL_VOCABULARY_K)]) == 0
    printed = capsys.readouterr().out
    assert "finetune: 12 samples (every kept sample) in 1 shards" in printed
    assert "stores logits, attention, vision_tokens" in printed

    # The teacher folder does not exist: a complete cache never reads it.
    assert main(["distill", str(config), f"teacher_cache={cache}", "teacher.path=/nonexistent/teacher", *STEPS]) == 0
    assert (output / "finetune" / "COMPLETED").is_file()
    assert (output / "student" / "config.json").is_file()
    assert _losses(output) == pytest.approx(live_losses, rel=1e-3)


def test_partial_cache_distill_matches_live(cache_setup, tmp_path, live_losses, caplog):
    output = tmp_path / "run"
    config = write_config(cache_setup, output)
    cache = tmp_path / "cache"
    assert main(["cache-teacher", str(config), "--out", str(cache), "--top-k", str(FULL_VOCABULARY_K), "--min-length", "44"]) == 0

    with caplog.at_level(logging.INFO, logger="alignkd.cache.reader"):
        assert main(["distill", str(config), f"teacher_cache={cache}", *STEPS]) == 0
    assert "are computed by the live teacher" in caplog.text
    assert _losses(output) == pytest.approx(live_losses, rel=1e-3)


def test_sft_preset_has_nothing_to_cache(cache_setup, tmp_path, caplog):
    config = write_config(cache_setup, tmp_path / "run", loss={"preset": "sft"})
    with caplog.at_level(logging.ERROR):
        assert main(["cache-teacher", str(config), "--out", str(tmp_path / "cache")]) == 1
    assert "nothing to cache" in caplog.text


def test_invalid_option_is_error(cache_setup, tmp_path, caplog):
    config = write_config(cache_setup, tmp_path / "run")
    with caplog.at_level(logging.ERROR):
        assert main(["cache-teacher", str(config), "--out", str(tmp_path / "cache"), "--top-k", "0"]) == 1
    assert "--top-k must be at least 1, got 0" in caplog.text


def test_overrides_change_config(cache_setup, tmp_path):
    config = write_config(cache_setup, tmp_path / "run")
    cache = tmp_path / "cache"
    code = main(["cache-teacher", str(config), "loss.preset=vanilla-kd", "--out", str(cache), "--top-k", "8"])
    assert code == 0
    manifest = json.loads((cache / "finetune" / "manifest.json").read_text())
    assert manifest["write_settings"]["outputs"] == ["logits"]
    assert manifest["write_settings"]["top_k"] == 8
