"""DistillationTrainer: exact gradient accumulation, a frozen teacher, and trained adapters."""

from __future__ import annotations

import pytest
import torch
import yaml
from transformers import TrainerCallback

from alignkd.config import apply_overrides, from_mapping
from alignkd.training.config import DistillConfig
from alignkd.training.run import build_stage, load_teacher

from training_helpers import write_config

pytestmark = pytest.mark.slow


def _build(tiny_setup, output, overrides=()):
    mapping = yaml.safe_load(write_config(tiny_setup, output).read_text())
    config = from_mapping(DistillConfig, apply_overrides(mapping, list(overrides)))
    teacher, teacher_loaded = load_teacher(config, config.loss.resolved())
    name, stage = config.stages()[0]
    setup = build_stage(
        config,
        name,
        stage,
        student_path=config.student.path,
        previous_adapters=None,
        teacher=teacher,
        teacher_loaded=teacher_loaded,
    )
    return setup, teacher


class _FirstStepGradients(TrainerCallback):
    """Keep a copy of every gradient just before the first optimizer step."""

    def __init__(self):
        self.gradients = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.gradients is None:
            self.gradients = {
                name: parameter.grad.detach().clone()
                for name, parameter in model.named_parameters()
                if parameter.grad is not None
            }


def _first_step_gradients(tiny_setup, output, batch_size, accumulation):
    overrides = [
        f"finetune.optimization.per_device_batch_size={batch_size}",
        f"finetune.optimization.gradient_accumulation_steps={accumulation}",
        "finetune.optimization.max_steps=1",
        "finetune.optimization.max_grad_norm=0",
        "finetune.data.group_by=none",
        "save_steps=100",
    ]
    setup, _ = _build(tiny_setup, output, overrides)
    capture = _FirstStepGradients()
    setup.trainer.add_callback(capture)
    setup.trainer.train()
    return capture.gradients


def test_accumulation_matches_large_batch(tiny_setup, tmp_path):
    whole = _first_step_gradients(tiny_setup, tmp_path / "whole", batch_size=4, accumulation=1)
    halves = _first_step_gradients(tiny_setup, tmp_path / "halves", batch_size=2, accumulation=2)
    singles = _first_step_gradients(tiny_setup, tmp_path / "singles", batch_size=1, accumulation=4)

    assert whole.keys() == halves.keys() == singles.keys()
    assert any(name.startswith("objective.adapters") for name in whole)
    for name, gradient in whole.items():
        torch.testing.assert_close(halves[name], gradient, rtol=1e-4, atol=1e-7, msg=name)
        torch.testing.assert_close(singles[name], gradient, rtol=1e-4, atol=1e-7, msg=name)


def test_teacher_frozen_after_step(tiny_setup, tmp_path):
    setup, teacher = _build(tiny_setup, tmp_path / "run", ["finetune.optimization.max_steps=1"])
    setup.trainer.train()

    assert not teacher.model.training
    for name, parameter in teacher.model.named_parameters():
        assert not parameter.requires_grad, name
        assert parameter.grad is None, name
    assert not any(name.startswith("teacher") for name, _ in setup.module.named_parameters())
    assert not any(key.startswith("teacher") for key in setup.module.state_dict())

    batch = next(iter(setup.trainer.get_train_dataloader()))
    output = teacher(batch, setup.module.objective.settings)
    assert output.logits.grad_fn is None
    assert output.vision_tokens.grad_fn is None
    assert output.text_vision_attention.grad_fn is None


def test_adapters_train_and_survive_resume(tiny_setup, tmp_path):
    setup, _ = _build(tiny_setup, tmp_path / "run", ["finetune.optimization.max_steps=2", "save_steps=2"])
    adapters = setup.module.objective.adapters
    initial = {name: value.clone() for name, value in adapters.state_dict().items()}

    optimized = {id(parameter) for group in setup.trainer.create_optimizer().param_groups for parameter in group["params"]}
    assert all(id(parameter) in optimized for parameter in adapters.parameters())

    setup.trainer.train()
    trained = {name: value.clone() for name, value in adapters.state_dict().items()}
    for name, value in trained.items():
        assert not torch.equal(value, initial[name]), name

    fresh, _ = _build(tiny_setup, tmp_path / "fresh", ["finetune.optimization.max_steps=2"])
    fresh.trainer._load_from_checkpoint(str(tmp_path / "run" / "finetune" / "checkpoint-2"))
    for name, value in fresh.module.objective.adapters.state_dict().items():
        assert torch.equal(value, trained[name]), name
    for name, value in fresh.module.student.state_dict().items():
        assert torch.equal(value, setup.module.student.state_dict()[name]), name


def test_frozen_adapters_stay_fixed(tiny_setup, tmp_path):
    setup, _ = _build(
        tiny_setup, tmp_path / "run", ["finetune.optimization.max_steps=2", "loss.adapter_mode=frozen"]
    )
    adapters = setup.module.objective.adapters
    initial = {name: value.clone() for name, value in adapters.state_dict().items()}
    setup.trainer.train()
    for name, value in adapters.state_dict().items():
        assert torch.equal(value, initial[name]), name
    optimized = {id(parameter) for group in setup.trainer.optimizer.param_groups for parameter in group["params"]}
    assert not any(id(parameter) in optimized for parameter in adapters.parameters())


def test_vision_tower_frozen(tiny_setup, tmp_path):
    from alignkd.models.loading import get_vlm_adapter

    setup, _ = _build(tiny_setup, tmp_path / "run", ["finetune.optimization.max_steps=1"])
    tower = get_vlm_adapter(setup.module.student).vision_tower
    before = {name: value.clone() for name, value in tower.state_dict().items()}
    setup.trainer.train()
    assert not any(parameter.requires_grad for parameter in tower.parameters())
    for name, value in tower.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_nan_stops_before_optimizer_step(tiny_setup, tmp_path):
    from alignkd.losses.objective import NonFiniteLossError

    setup, _ = _build(tiny_setup, tmp_path / "run", ["finetune.optimization.max_steps=2"])
    student = setup.module.student
    with torch.no_grad():
        student.lm_head.weight[0, 0] = float("nan")
    before = {name: value.clone() for name, value in student.state_dict().items()}

    with pytest.raises(NonFiniteLossError, match="not finite"):
        setup.trainer.train()
    # The optimizer never stepped: every weight is as before (NaN compared equal to NaN).
    for name, value in student.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, equal_nan=True, msg=name)
