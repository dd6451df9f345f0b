"""`DistillationTrainer`: transformers' Trainer with the Align-KD objective.

What it changes in Trainer, and why:

- `get_batch_samples`: after Trainer fetches the micro-batches of one optimizer step, their
  item counts (supervised tokens, distilled tokens, attention samples, image samples) are
  summed, and summed across ranks, into the `StepNormalizers` that every term divides by. That
  makes gradient accumulation and data parallelism exact (see `alignkd.losses.logits`).
- `compute_loss`: runs the `DistillationModule` and records every term for logging. The loss
  is already normalised over the whole step, so it is not divided by the accumulation steps.
  It is multiplied by the number of processes, because data parallelism averages gradients
  across ranks while the normaliser is a global count.
- `create_optimizer`: separate learning rates for the language model, the projector and the
  adapters; no weight decay on biases and norms.
- `_save` / `_load_from_checkpoint`: a checkpoint holds the student in its native format
  (loadable alone, under its own key names) and the adapters; the teacher is never saved and
  is reloaded from its own path on resume. Trainer itself adds the optimizer, scheduler, RNG
  states and the data position.
- `log`: adds each term, the projector learning rate, tokens per second and skipped samples.
- `_clip_grad_norm`: a non-finite gradient norm stops the run with an error (except under
  fp16 loss scaling, where the scaler skips the step and lowers the scale).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer

from alignkd.errors import AlignKDError
from alignkd.losses.objective import StepNormalizers
from alignkd.models.loading import get_vlm_adapter, load_vlm, save_vlm
from alignkd.training.module import BATCH_KEYS, DistillationModule

logger = logging.getLogger(__name__)

ADAPTERS_FILE = "adapters.safetensors"
STUDENT_FOLDER = "student"


class NonFiniteGradientError(AlignKDError, FloatingPointError):
    """The gradient norm is NaN or infinite; the optimizer step was not taken."""


class DistillationTrainer(Trainer):
    """Trainer for a `DistillationModule`.

    Extra args:
        learning_rates: {"language_model": lr, "projector": lr, "adapters": lr}.
        num_vision_tokens: the student's vision tokens per image (to count distilled positions).
        tokenizer, image_processor: saved with the student in every checkpoint.
        sampler_factory: optional callable (trainer) -> torch Sampler for the training data.
        skip_counts: optional callable returning {reason: count} of samples skipped so far.
    """

    def __init__(
        self,
        *args,
        learning_rates: dict[str, float],
        num_vision_tokens: int,
        tokenizer,
        image_processor,
        sampler_factory: Callable[["DistillationTrainer"], torch.utils.data.Sampler] | None = None,
        skip_counts: Callable[[], dict[str, int]] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.learning_rates = learning_rates
        self.num_vision_tokens = num_vision_tokens
        self.student_tokenizer = tokenizer
        self.student_image_processor = image_processor
        self.sampler_factory = sampler_factory
        self.skip_counts = skip_counts

        self.loss_is_scaled_for_ga = True
        self.model_accepts_loss_kwargs = False
        self._step_normalizers: StepNormalizers | None = None
        self._term_sums: dict[str, float] = defaultdict(float)
        self._tokens_since_log = 0
        self._last_log_time = time.perf_counter()
        self._last_log_step = 0

    @property
    def distillation_module(self) -> DistillationModule:
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    # ---- Step normalisation -------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)

        positions = self.distillation_module.objective.settings.student_logit_positions
        counts = StepNormalizers()
        for batch in batch_samples:
            counts = counts + StepNormalizers.from_batch(batch, positions, self.num_vision_tokens)

        values = counts.as_tensor(device)
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="sum")
        self._step_normalizers = StepNormalizers.from_tensor(values)

        if batch_samples and self._step_normalizers.supervised_tokens == 0:
            logger.warning(
                "optimizer step %d has no supervised token in any of its %d micro-batches; its supervised loss is 0",
                self.state.global_step + 1,
                len(batch_samples),
            )
        return batch_samples, None

    # ---- Loss -----------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = {key: value for key, value in inputs.items() if key in BATCH_KEYS}
        outputs = model(**batch, normalizers=self._step_normalizers)

        for name, value in outputs["terms"].items():
            self._term_sums[name] += float(value)
        self._tokens_since_log += int(batch["attention_mask"].sum())
        if "image_mask" in batch and batch["image_mask"] is not None:
            self._tokens_since_log += int(batch["image_mask"].sum()) * (self.num_vision_tokens - 1)

        loss = outputs["loss"]
        if self.accelerator.num_processes > 1:
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _clip_grad_norm(self, model):
        grad_norm = super()._clip_grad_norm(model)
        norm = float(grad_norm) if grad_norm is not None else 0.0
        if not math.isfinite(norm) and not self.args.fp16:
            raise NonFiniteGradientError(
                f"the gradient norm at step {self.state.global_step + 1} is {norm}; the optimizer step was not taken. "
                "Lower the learning rate, check the data of this step, or use bf16 instead of fp16"
            )
        return grad_norm

    # ---- Optimizer ------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer

        module = self.distillation_module
        projector = get_vlm_adapter(module.student).projector
        projector_ids = {id(parameter) for parameter in projector.parameters()}
        adapter_ids = set()
        if module.objective.adapters is not None:
            adapter_ids = {id(parameter) for parameter in module.objective.adapters.parameters()}

        groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = defaultdict(list)
        for name, parameter in module.named_parameters():
            if not parameter.requires_grad:
                continue
            if id(parameter) in adapter_ids:
                kind = "adapters"
            elif id(parameter) in projector_ids:
                kind = "projector"
            else:
                kind = "language_model"
            # Biases, norms and other vectors get no weight decay, as usual for transformers.
            decays = parameter.ndim >= 2
            groups[(kind, decays)].append(parameter)

        parameter_groups = []
        for kind in ("language_model", "projector", "adapters"):
            for decays in (True, False):
                parameters = groups.get((kind, decays))
                if parameters:
                    parameter_groups.append(
                        {
                            "params": parameters,
                            "lr": self.learning_rates[kind],
                            "weight_decay": self.args.weight_decay if decays else 0.0,
                            "name": f"{kind}{'' if decays else '_no_decay'}",
                        }
                    )
        if not parameter_groups:
            raise ValueError("nothing to train: every parameter of the student and the adapters is frozen")

        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, module)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(parameter_groups, **optimizer_kwargs)
        for group in parameter_groups:
            logger.info(
                "optimizer group %s: %d tensors, %d parameters, learning rate %g",
                group["name"],
                len(group["params"]),
                sum(parameter.numel() for parameter in group["params"]),
                group["lr"],
            )
        return self.optimizer

    # ---- Data -----------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None):
        if self.sampler_factory is not None:
            return self.sampler_factory(self)
        return super()._get_train_sampler(train_dataset)

    # ---- Checkpoints ----------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = Path(output_dir if output_dir is not None else self.args.output_dir)
        if not self.args.should_save:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        module = self.distillation_module
        # NOTE: under DeepSpeed ZeRO-3 `state_dict` contains the gathered weights; saving them
        # through `module.student` assumes stage3_gather_16bit_weights_on_model_save, which
        # the shipped zero3 config sets. This path has not been run here (no GPU).
        save_vlm(module.student, self.student_tokenizer, self.student_image_processor, output_dir / STUDENT_FOLDER)
        save_adapters(module, output_dir)
        torch.save(self.args, output_dir / "training_args.bin")
        logger.info("Saved the student and the adapters to %s", output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        checkpoint = Path(resume_from_checkpoint)
        student_folder = checkpoint / STUDENT_FOLDER
        if not student_folder.is_dir():
            raise FileNotFoundError(
                f"checkpoint {checkpoint} has no '{STUDENT_FOLDER}' folder; it was not written by alignkd distill"
            )
        module = self.distillation_module
        restored = load_vlm(student_folder, dtype=next(module.student.parameters()).dtype).model
        module.student.load_state_dict(restored.state_dict(), strict=True)
        load_adapters(module, checkpoint)
        logger.info("Restored the student and the adapters from %s", checkpoint)

    # ---- Logging --------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            self._add_training_metrics(logs)
        super().log(logs, start_time)

    def _add_training_metrics(self, logs: dict[str, float]) -> None:
        steps = max(self.state.global_step - self._last_log_step, 1)
        names = sorted(self._term_sums)
        values = torch.tensor([self._term_sums[name] for name in names] + [float(self._tokens_since_log)], dtype=torch.float64)
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values.to(self.args.device), reduction="sum").cpu()

        for name, value in zip(names, values[:-1].tolist()):
            if name != "total":
                logs[f"loss_{name}"] = round(value / steps, 6)

        elapsed = max(time.perf_counter() - self._last_log_time, 1e-9)
        logs["tokens_per_second"] = round(float(values[-1]) / elapsed, 1)
        if "learning_rate" in logs and self.learning_rates["language_model"] > 0:
            # One schedule scales every group, so the projector's rate keeps its ratio to the LLM's.
            ratio = self.learning_rates["projector"] / self.learning_rates["language_model"]
            logs["learning_rate_projector"] = logs["learning_rate"] * ratio
        if self.skip_counts is not None:
            for reason, count in self.skip_counts().items():
                logs[f"skipped_{reason}"] = count

        self._term_sums.clear()
        self._tokens_since_log = 0
        self._last_log_time = time.perf_counter()
        self._last_log_step = self.state.global_step


def save_adapters(module: DistillationModule, output_dir: str | os.PathLike) -> None:
    """Write the adapters of `module` (if any) to `output_dir/adapters.safetensors`."""
    adapters = module.objective.adapters
    if adapters is None:
        return
    tensors = {name: value.detach().contiguous().cpu() for name, value in adapters.state_dict().items()}
    save_file(tensors, str(Path(output_dir) / ADAPTERS_FILE), metadata={"mode": adapters.mode})


def load_adapters(module: DistillationModule, folder: str | os.PathLike) -> bool:
    """Load `folder/adapters.safetensors` into the adapters of `module`; False if either is absent."""
    adapters = module.objective.adapters
    path = Path(folder) / ADAPTERS_FILE
    if adapters is None:
        return False
    if not path.is_file():
        return False
    state: dict[str, Any] = load_file(str(path))
    adapters.load_state_dict(state, strict=True)
    return True
