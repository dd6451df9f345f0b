"""`alignkd init-model` and `alignkd chat` as a user runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from vlm_test_helpers import IMAGE_SIZE, tiny_spec

from alignkd.cli import main
from alignkd.data.images import open_rgb_image, preprocess_image
from alignkd.data.tokenization import encode_generation_prompt
from alignkd.models.generation import greedy_generate
from alignkd.models.loading import load_vlm


@pytest.fixture
def tokenizer_dir(tmp_path, llama_tokenizer):
    folder = tmp_path / "tokenizer"
    llama_tokenizer.save_pretrained(str(folder))
    return folder


def write_picture(path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(IMAGE_SIZE + 8, IMAGE_SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_init_model_writes_loadable_folder(tmp_path, tokenizer_dir, capsys, suffix):
    spec_path = tmp_path / f"spec{suffix}"
    spec = tiny_spec()
    spec_path.write_text(yaml.safe_dump(spec) if suffix == ".yaml" else json.dumps(spec))

    code = main(
        [
            "init-model",
            "--config",
            str(spec_path),
            "--tokenizer",
            str(tokenizer_dir),
            "--output",
            str(tmp_path / "model"),
            "--seed",
            "5",
        ]
    )
    assert code == 0
    assert "wrote a mobilevlm model" in capsys.readouterr().out
    loaded = load_vlm(tmp_path / "model")
    assert loaded.family == "mobilevlm"
    assert (tmp_path / "model" / "preprocessor_config.json").is_file()
    assert (tmp_path / "model" / "tokenizer.json").is_file()


def test_init_model_bad_spec_exits_1(tmp_path, tokenizer_dir):
    spec = tiny_spec()
    spec["projector"]["type"] = "qformer"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    code = main(
        [
            "init-model",
            "--config",
            str(spec_path),
            "--tokenizer",
            str(tokenizer_dir),
            "--output",
            str(tmp_path / "model"),
        ]
    )
    assert code == 1
    assert not (tmp_path / "model").exists()


def test_chat_prints_greedy_answer(tmp_path, tokenizer_dir, capsys):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_spec()))
    assert (
        main(
            [
                "init-model",
                "--config",
                str(spec_path),
                "--tokenizer",
                str(tokenizer_dir),
                "--output",
                str(tmp_path / "model"),
            ]
        )
        == 0
    )
    picture = write_picture(tmp_path / "picture.png")
    capsys.readouterr()

    code = main(
        [
            "chat",
            "--model",
            str(tmp_path / "model"),
            "--image",
            str(picture),
            "--max-new-tokens",
            "5",
            "What is in the image?",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out.strip()

    # The same generation through the Python API.
    loaded = load_vlm(tmp_path / "model")
    image = preprocess_image(open_rgb_image(picture), loaded.image_processor, aspect_ratio="pad")
    prompt = encode_generation_prompt(loaded.tokenizer, "v1", "What is in the image?", has_image=True)
    (answer,) = greedy_generate(
        loaded.model, [prompt], [image], max_new_tokens=5, eos_token_id=loaded.tokenizer.eos_token_id, pad_token_id=0
    )
    assert printed == loaded.tokenizer.decode(answer, skip_special_tokens=True).strip()
    assert torch.is_tensor(image)
    assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE)


def test_chat_missing_model_exits_1(tmp_path):
    assert main(["chat", "--model", str(tmp_path / "none"), "Hello?"]) == 1


def test_chat_missing_image_fails_before_loading(tmp_path, monkeypatch, caplog):
    import alignkd.models.loading as loading

    def fail_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the image was read")

    monkeypatch.setattr(loading, "load_vlm", fail_load)

    assert main(["chat", "--model", str(tmp_path), "--image", str(tmp_path / "nope.png"), "Hello?"]) == 1
    assert "image file not found" in caplog.text


def test_spec_examples_build(llama_tokenizer):
    import textwrap
    from pathlib import Path

    import yaml

    from alignkd.models.cli import SPEC_EXAMPLE
    from alignkd.models.spec import init_model

    help_spec = textwrap.dedent(SPEC_EXAMPLE[SPEC_EXAMPLE.index("  family:") :])
    example_files = sorted((Path(__file__).parents[2] / "examples" / "specs").glob("*.yaml"))
    assert example_files

    for text in [help_spec, *(path.read_text() for path in example_files)]:
        loaded = init_model(yaml.safe_load(text), llama_tokenizer)
        assert loaded.family == "mobilevlm"
