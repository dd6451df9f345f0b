"""`alignkd data check` as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from data_helpers import conversation

from alignkd.cli import main


@pytest.fixture
def tokenizer_folder(tmp_path, llama_tokenizer):
    folder = tmp_path / "tokenizer"
    llama_tokenizer.save_pretrained(str(folder))
    return folder


def run_check(data, images, tokenizer_folder, *extra: str) -> int:
    arguments = ["data", "check", str(data), "--tokenizer", str(tokenizer_folder), "--num-vision-tokens", "4"]
    if images is not None:
        arguments += ["--images", str(images)]
    return main(arguments + list(extra))


def test_clean_data_exits_zero(write_data, image_folder, tokenizer_folder, capsys):
    data = write_data([conversation("<image>\nColour?", "Red.", image="red.png"), conversation("Hi", "Hello")])

    status = run_check(data, image_folder, tokenizer_folder)

    output = capsys.readouterr().out
    assert status == 0
    assert "samples: 2 in the file, 2 kept (1 with an image, 1 text-only)" in output
    assert "Problems: none" in output
    assert "Result: OK" in output


def test_missing_image_exits_nonzero(write_data, image_folder, tokenizer_folder, capsys):
    data = write_data(
        [
            conversation("<image>\nColour?", "Red.", image="red.png", sample_id="1"),
            conversation("<image>\nWhat?", "A dog.", image="sam/does_not_exist.jpg", sample_id="2"),
            conversation("Hi", "Hello", sample_id="3"),
        ]
    )

    status = run_check(data, image_folder, tokenizer_folder)

    output = capsys.readouterr().out
    assert status == 1
    assert "image_missing                    1  ERROR" in output
    assert "sample '2' (item 1 of data.json): image file not found" in output
    assert "Result: FAILED" in output


def test_skip_within_threshold_exits_zero(write_data, image_folder, tokenizer_folder, capsys):
    data = write_data(
        [
            conversation("<image>\nColour?", "Red.", image="red.png"),
            conversation("<image>\nWhat?", "A dog.", image="gone.jpg"),
        ]
    )

    status = run_check(data, image_folder, tokenizer_folder, "--on-error", "skip", "--max-skip-fraction", "0.5")

    assert status == 0
    assert "image_missing                    1  removed" in capsys.readouterr().out


def test_max_length_reported(write_data, image_folder, tokenizer_folder, capsys):
    data = write_data([conversation("<image>\nColour?", "Red.", image="red.png")])

    status = run_check(data, image_folder, tokenizer_folder, "--max-length", "3")

    output = capsys.readouterr().out
    assert status == 1
    assert "length limit: 3 tokens, counting 4 vision tokens per image" in output
    assert "over_length" in output


def test_template_rule_reported(write_data, image_folder, tokenizer_folder, capsys):
    data = write_data([conversation("Q", "A", sample_id="t")])

    status = run_check(data, image_folder, tokenizer_folder, "--template", "plain")

    assert status == 1
    assert "sample 't' (item 0 of data.json): template 'plain' needs an image" in capsys.readouterr().out


def test_missing_tokenizer_is_one_line_error(write_data, tmp_path, caplog):
    data = write_data([conversation("Hi", "Hello")])

    status = run_check(data, None, tmp_path / "no_tokenizer")

    assert status == 1
    assert "tokenizer folder not found" in caplog.text


def test_unknown_template_is_one_line_error(write_data, tokenizer_folder, caplog):
    data = write_data([conversation("Hi", "Hello")])

    status = run_check(data, None, tokenizer_folder, "--template", "chatml")

    assert status == 1
    assert "unknown chat template 'chatml'" in caplog.text


def test_vision_tokens_read_from_model(write_data, image_folder, tokenizer_folder, tmp_path, llama_tokenizer, capsys):
    from alignkd.models.loading import save_vlm
    from alignkd.models.spec import init_model

    spec = {
        "family": "mobilevlm",
        "vision": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "patch_size": 8, "image_size": 32},
        "projector": {"type": "ldpnetv2", "grid_size": 3},
        "language": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
    }
    loaded = init_model(spec, llama_tokenizer, seed=0)
    save_vlm(loaded.model, loaded.tokenizer, loaded.image_processor, tmp_path / "model")
    data = write_data([conversation("<image>\nColour?", "Red.", image="red.png")])

    arguments = ["data", "check", str(data), "--tokenizer", str(tokenizer_folder), "--images", str(image_folder)]
    assert main(arguments + ["--model", str(tmp_path / "model")]) == 0
    assert "counting 9 vision tokens per image" in capsys.readouterr().out

    # Without --tokenizer the first model's tokenizer is used. A fresh process shows whether
    # transformers warns about the mobilevlm model type while it loads that tokenizer.
    arguments = ["data", "check", str(data), "--images", str(image_folder), "--model", str(tmp_path / "model")]
    completed = subprocess.run(
        [sys.executable, "-m", "alignkd.cli", *arguments], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert f"tokenizer {tmp_path / 'model'}" in completed.stdout
    assert "You are using a model of type" not in completed.stderr
    assert "rope_scaling" not in completed.stderr


def test_missing_model_folder_named(write_data, tokenizer_folder, tmp_path, caplog):
    data = write_data([conversation("Hi", "Hello")])

    arguments = ["data", "check", str(data), "--tokenizer", str(tokenizer_folder)]
    status = main(arguments + ["--model", str(tmp_path / "nope")])

    assert status == 1
    assert f"model folder not found: {tmp_path / 'nope'}" in caplog.text
