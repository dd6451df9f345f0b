"""Two data-parallel processes on the CPU give the result of one process with the doubled batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from alignkd.cli import main

from training_helpers import write_config

pytestmark = pytest.mark.slow

# Weights after two AdamW steps differ only by the order of floating-point sums (all-reduce
# against one larger batch); measured differences are below 1e-8.
TOLERANCE = 1e-6


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ordered_data(tiny_setup, folder):
    """Order the samples so that in step 1 one rank gets only text-only samples: nothing to distil."""
    samples = json.loads(tiny_setup["data"].read_text())
    images = [sample for sample in samples if "image" in sample]
    texts = [sample for sample in samples if "image" not in sample]
    ordered = [images[0], images[1], texts[0], texts[1], images[2], images[3], images[4], texts[2]]
    path = folder / "ordered.json"
    path.write_text(json.dumps(ordered))
    return path


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate launcher is not installed")
def test_two_processes_match_one(tiny_setup, tmp_path):
    data = _ordered_data(tiny_setup, tmp_path)
    common = [
        f"finetune.data.path={data}",
        f"finetune.data.image_folder={tiny_setup['data'].parent / 'images'}",
        "finetune.optimization.shuffle=false",
        "finetune.optimization.gradient_accumulation_steps=1",
        "finetune.optimization.max_steps=2",
    ]

    single = tmp_path / "single"
    assert main(["distill", str(write_config(tiny_setup, single)), *common, "finetune.optimization.per_device_batch_size=4"]) == 0

    parallel = tmp_path / "parallel"
    # On a machine without GPUs, --multi_gpu makes accelerate start the processes with torchrun;
    # they then train on the CPU over gloo.
    command = [
        "accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "alignkd.cli", "--log-level", "WARNING", "distill", str(write_config(tiny_setup, parallel)),
        *common, "finetune.optimization.per_device_batch_size=2",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment.pop("CUDA_VISIBLE_DEVICES", None)
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-4000:]

    expected = load_file(str(single / "student" / "model.safetensors"))
    actual = load_file(str(parallel / "student" / "model.safetensors"))
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=TOLERANCE, msg=key)
    expected_adapters = load_file(str(single / "finetune" / "adapters.safetensors"))
    actual_adapters = load_file(str(parallel / "finetune" / "adapters.safetensors"))
    for key, value in expected_adapters.items():
        torch.testing.assert_close(actual_adapters[key], value, rtol=0, atol=TOLERANCE, msg=key)

    history = json.loads((parallel / "finetune" / "log_history.json").read_text())
    single_history = json.loads((single / "finetune" / "log_history.json").read_text())
    first = next(entry for entry in history if "loss" in entry)
    single_first = next(entry for entry in single_history if "loss" in entry)
    assert first["loss"] == pytest.approx(single_first["loss"], rel=1e-5)
    assert first["loss_attention"] == pytest.approx(single_first["loss_attention"], rel=1e-5)
