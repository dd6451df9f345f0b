"""`alignkd distill` end to end on tiny models: training, saving, resuming and config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from alignkd.cli import main
from alignkd.models.forward import forward_vlm
from alignkd.models.loading import load_vlm

from training_helpers import write_config

pytestmark = pytest.mark.slow


def _sft_losses(stage_dir):
    history = json.loads((stage_dir / "log_history.json").read_text())
    return [entry["loss_sft"] for entry in history if "loss_sft" in entry]


def test_distill_trains_and_saves_student(tiny_setup, tmp_path):
    output = tmp_path / "run"
    config = write_config(tiny_setup, output)
    assert main(["distill", str(config), "finetune.optimization.max_steps=20", "finetune.optimization.learning_rate=0.005"]) == 0

    losses = _sft_losses(output / "finetune")
    assert len(losses) == 20
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3

    for name in ("config.yaml", "finetune/loss_curve.png", "finetune/adapters.safetensors", "finetune/COMPLETED"):
        assert (output / name).is_file(), name

    # The final student is the student alone, under its own key names, and runs by itself.
    weights = load_file(str(output / "student" / "model.safetensors"))
    assert all(key.startswith(("model.", "lm_head.")) for key in weights)
    assert not any(key.startswith(("student.", "objective.", "teacher.")) for key in weights)

    student = load_vlm(output / "student")
    batch = student.tokenizer(["USER: hello ASSISTANT: yes"], return_tensors="pt")
    out = forward_vlm(student.model, batch["input_ids"], batch["attention_mask"], logit_positions="all")
    assert torch.isfinite(out.logits).all()

    image = tiny_setup["data"].parent / "images" / "0.png"
    chat = ["chat", "--model", str(output / "student"), "--image", str(image), "--max-new-tokens", "4", "What is in the image?"]
    assert main(chat) == 0


def test_same_seed_gives_same_weights(tiny_setup, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for output in (first, second):
        assert main(["distill", str(write_config(tiny_setup, output)), "finetune.optimization.max_steps=3"]) == 0
    first_weights = load_file(str(first / "student" / "model.safetensors"))
    second_weights = load_file(str(second / "student" / "model.safetensors"))
    for key, value in first_weights.items():
        assert torch.equal(value, second_weights[key]), key


def _run_cli(config, *overrides):
    command = [sys.executable, "-m", "alignkd.cli", "--log-level", "WARNING", "distill", str(config), *overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_killed_run_resumes_to_same_weights(tiny_setup, tmp_path):
    steps = ["finetune.optimization.max_steps=10", "save_steps=2"]
    reference = tmp_path / "reference"
    assert main(["distill", str(write_config(tiny_setup, reference)), *steps]) == 0

    interrupted = tmp_path / "interrupted"
    config = write_config(tiny_setup, interrupted)
    process = _run_cli(config, *steps)
    marker = interrupted / "finetune" / "checkpoint-4" / "trainer_state.json"
    deadline = time.monotonic() + 240
    while not marker.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # Kill without warning while training goes on past the checkpoint (or at its end).
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert marker.is_file()
    assert not (interrupted / "student").exists()

    resumed = _run_cli(config, *steps)
    _, errors = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, errors

    expected = load_file(str(reference / "student" / "model.safetensors"))
    actual = load_file(str(interrupted / "student" / "model.safetensors"))
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), key
    expected_adapters = load_file(str(reference / "finetune" / "adapters.safetensors"))
    actual_adapters = load_file(str(interrupted / "finetune" / "adapters.safetensors"))
    for key, value in expected_adapters.items():
        assert torch.equal(value, actual_adapters[key]), key


def test_weights_only_checkpoint_is_rejected(tiny_setup, tmp_path, caplog):
    output = tmp_path / "run"
    config = write_config(tiny_setup, output)
    assert main(["distill", str(config), "finetune.optimization.max_steps=2", "save_steps=1"]) == 0
    (output / "finetune" / "COMPLETED").unlink()
    (output / "finetune" / "checkpoint-2" / "optimizer.pt").unlink()

    assert main(["distill", str(config), "finetune.optimization.max_steps=2", "save_steps=1"]) == 1
    assert "holds weights only (missing: optimizer.pt)" in caplog.text


def test_mistyped_key_is_named(tiny_setup, tmp_path, caplog):
    config = write_config(tiny_setup, tmp_path / "run")
    assert main(["distill", str(config), "finetune.optimization.learning_rat=1e-3"]) == 1
    assert "unknown config key 'finetune.optimization.learning_rat' (did you mean 'learning_rate'?)" in caplog.text
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("preset", ["sft", "vanilla-kd", "released-code"])
def test_presets_one_key_apart(tiny_setup, tmp_path, preset):
    output = tmp_path / preset
    config = write_config(tiny_setup, output)
    assert main(["distill", str(config), f"loss.preset={preset}", "finetune.optimization.max_steps=2"]) == 0
    history = json.loads((output / "finetune" / "log_history.json").read_text())
    logged = {key for entry in history for key in entry}
    assert ("loss_logits" in logged) == (preset != "sft")
    assert ("loss_vision" in logged) == (preset == "released-code")
    assert "loss_attention" not in logged


def test_changed_config_is_not_resumed(tiny_setup, tmp_path, caplog):
    output = tmp_path / "run"
    config = write_config(tiny_setup, output)
    assert main(["distill", str(config), "finetune.optimization.max_steps=2"]) == 0
    # Logging and saving intervals may change; the learning rate may not.
    assert main(["distill", str(config), "finetune.optimization.max_steps=2", "logging_steps=2"]) == 0
    assert main(["distill", str(config), "finetune.optimization.max_steps=2", "finetune.optimization.learning_rate=0.1"]) == 1
    assert "changed: finetune.optimization.learning_rate" in caplog.text


def test_llava_student_with_image_token(tiny_setup, tmp_path, llama_tokenizer):
    # init_model appends LLaVA's <image> token to the student's copy of the shared tokenizer.
    from alignkd.models.loading import save_vlm
    from alignkd.models.spec import init_model

    spec = {
        "family": "llava",
        "vision": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "patch_size": 8, "image_size": 32},
        "language": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
    }
    student = init_model(spec, llama_tokenizer, seed=3)
    save_vlm(student.model, student.tokenizer, student.image_processor, tmp_path / "llava-student")
    assert len(student.tokenizer) == len(llama_tokenizer) + 1

    output = tmp_path / "run"
    setup = dict(tiny_setup, student=tmp_path / "llava-student")
    # The LLaVA student has 16 vision tokens per image and the teacher 4, so only the logit term applies.
    config = write_config(setup, output, loss={"preset": "vanilla-kd"})
    assert main(["distill", str(config), "finetune.optimization.max_steps=2"]) == 0

    history = json.loads((output / "finetune" / "log_history.json").read_text())
    logit_losses = [entry["loss_logits"] for entry in history if "loss_logits" in entry]
    assert logit_losses
    assert all(value > 0 and value == value for value in logit_losses)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("student.path={root}/missing-student", "model folder not found: {root}/missing-student"),
        ("finetune.data.path={root}/missing.json", "finetune.data.path: data file not found: {root}/missing.json"),
    ],
)
def test_missing_path_fails_before_teacher_loads(tiny_setup, tmp_path, caplog, monkeypatch, override, expected):
    import alignkd.training.run as run

    def fail_load(*args, **kwargs):
        raise AssertionError("the teacher was loaded before the paths were checked")

    monkeypatch.setattr(run, "load_teacher", fail_load)
    config = write_config(tiny_setup, tmp_path / "run")

    assert main(["distill", str(config), override.format(root=tmp_path)]) == 1
    assert expected.format(root=tmp_path) in caplog.text


def test_skipped_samples_recorded(tiny_setup, tmp_path):
    samples = json.loads(tiny_setup["data"].read_text())
    samples[0]["image"] = "does_not_exist.png"
    data = tmp_path / "train.json"
    data.write_text(json.dumps(samples))
    output = tmp_path / "run"
    config = write_config(tiny_setup, output)

    overrides = [
        f"finetune.data.path={data}",
        f"finetune.data.image_folder={tiny_setup['data'].parent / 'images'}",
        "finetune.data.on_error=skip",
        "finetune.data.max_skip_fraction=0.1",
        "finetune.optimization.max_steps=1",
    ]
    assert main(["distill", str(config), *overrides]) == 0

    metadata = json.loads((output / "finetune" / "run_metadata.json").read_text())
    assert metadata["data"]["samples_kept"] == len(samples) - 1
    assert metadata["data"]["samples_removed"] == {"image_missing": 1}
