"""The `alignkd distill` config: models, stages, objective and optimisation.

A config is a YAML file loaded strictly (unknown or mistyped keys are errors that name the
key). A minimal single-stage config:

    teacher: {path: models/teacher}
    student: {path: models/student}
    output_dir: runs/align-kd
    stage: finetune
    finetune:
      data: {path: data/train.json, image_folder: data/images, template: v1}
      optimization: {learning_rate: 4.0e-5, per_device_batch_size: 8, num_epochs: 1}
    loss: {preset: paper}

`stage: both` runs `pretrain` and then `finetune`; the student and the adapters of the first
stage start the second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from alignkd.config import ConfigError
from alignkd.data.config import DataConfig
from alignkd.losses.objective import ObjectiveConfig

Precision = Literal["fp32", "bf16", "fp16"]
ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]
StageName = Literal["pretrain", "finetune"]


@dataclass
class ModelSource:
    """The folder and dtype of a model to load."""

    path: str
    """A local model folder in the model family's native format (MobileVLM or LLaVA)."""

    dtype: ModelDtype = "auto"
    """Weights dtype. With "auto" the teacher takes the precision of the run (bf16 or fp16 under
    mixed precision, else fp32). The student keeps fp32 master weights when it trains."""


@dataclass
class OptimizationConfig:
    """Optimiser, schedule and batch settings of one stage."""

    learning_rate: float = 2.0e-5
    """Peak learning rate of the language model."""

    projector_learning_rate: float | None = None
    """Peak learning rate of the student's projector; null: the same as learning_rate."""

    adapter_learning_rate: float | None = None
    """Peak learning rate of the Align-KD adapters; null: the projector's learning rate."""

    weight_decay: float = 0.0
    """AdamW weight decay, applied to weight matrices only (not to biases and norms)."""

    lr_scheduler: str = "cosine"
    """Any transformers scheduler type: cosine, linear, constant, constant_with_warmup, ..."""

    warmup_ratio: float = 0.03
    """Fraction of the optimizer steps spent in linear warm-up."""

    per_device_batch_size: int = 8
    """Samples per micro-batch on each process."""

    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""

    num_epochs: float = 1.0
    """Passes over the data; ignored when max_steps is positive."""

    max_steps: int = -1
    """Optimizer steps to run; -1: derived from num_epochs."""

    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables clipping."""

    shuffle: bool = True
    """Shuffle the data each epoch with the run's seed (grouped as set by data.group_by); false keeps
    the file's order."""

    train_language_model: bool = True
    """Train the student's LLM; false trains only the projector (and the adapters)."""

    train_vision_tower: bool = False
    """Train the vision tower too. Align-KD keeps the student's tower frozen; this is for training a
    model from scratch (for example the demo's teacher)."""

    def validate(self) -> None:
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
        if self.per_device_batch_size < 1:
            raise ConfigError(f"per_device_batch_size must be at least 1, got {self.per_device_batch_size}")
        if self.gradient_accumulation_steps < 1:
            raise ConfigError(f"gradient_accumulation_steps must be at least 1, got {self.gradient_accumulation_steps}")
        if self.max_steps <= 0 and self.num_epochs <= 0:
            raise ConfigError("set num_epochs or max_steps to a positive value")

    @property
    def resolved_projector_learning_rate(self) -> float:
        return self.projector_learning_rate if self.projector_learning_rate is not None else self.learning_rate

    @property
    def resolved_adapter_learning_rate(self) -> float:
        if self.adapter_learning_rate is not None:
            return self.adapter_learning_rate
        return self.resolved_projector_learning_rate


@dataclass
class StageConfig:
    """The data and the optimisation of one training stage."""

    data: DataConfig
    """Training data, image folder, chat template and filtering (see `alignkd data check`)."""

    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    """Learning rates, schedule, batch size and length of this stage."""


@dataclass
class DistillConfig:
    """Everything `alignkd distill` needs. Every field can be overridden as `dotted.key=value`."""

    student: ModelSource
    """The model that is trained."""

    output_dir: str
    """Folder for checkpoints, logs, the loss curve, the resolved config and the final student."""

    teacher: ModelSource | None = None
    """The frozen model that is distilled; not needed by the "sft" preset or with teacher_cache."""

    stage: Literal["pretrain", "finetune", "both"] = "finetune"
    """The stages to run: one of them, or pretrain then finetune."""

    pretrain: StageConfig | None = None
    """Stage 1 (MobileVLM uses the "plain" template and caption data here)."""

    finetune: StageConfig | None = None
    """Stage 2 (MobileVLM uses the "v1" template and instruction data here)."""

    loss: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """Objective preset, term weights and adapter settings."""

    precision: Precision = "fp32"
    """fp32, or mixed precision (bf16 or fp16 autocast with fp32 master weights)."""

    gradient_checkpointing: bool = False
    """Recompute the student's decoder activations in backward to save memory."""

    seed: int = 0
    """Seeds model initialisation, adapters, data order and dropout."""

    logging_steps: int = 10
    """Optimizer steps between log lines."""

    save_steps: int = 500
    """Optimizer steps between resumable checkpoints."""

    save_total_limit: int | None = 2
    """Checkpoints kept per stage (oldest deleted first); null keeps all."""

    dataloader_num_workers: int = 0
    """Worker processes that load and preprocess samples."""

    deepspeed: str | None = None
    """DeepSpeed config: "zero2", "zero3" (shipped with alignkd) or a path to a JSON file."""

    teacher_cache: str | None = None
    """Folder written by `alignkd cache-teacher`; the teacher's outputs are read from it."""

    teacher_cache_verify: Literal["sha256", "size"] = "sha256"
    """How each cache shard is checked when first opened: its size and SHA-256 hash, or its size
    only (faster for very large caches, but it misses flipped bytes)."""

    def validate(self) -> None:
        wanted: list[StageName] = ["pretrain", "finetune"] if self.stage == "both" else [self.stage]
        for name in wanted:
            if getattr(self, name) is None:
                raise ConfigError(f"stage '{self.stage}' needs a '{name}' section with its data")
        needs_teacher = self.loss.resolved().needs_teacher
        if needs_teacher and self.teacher is None and self.teacher_cache is None:
            raise ConfigError(f"the '{self.loss.preset}' loss preset needs a teacher: set teacher.path or teacher_cache")
        if self.precision == "fp16" and self.student.dtype in ("float16", "bfloat16"):
            raise ConfigError(
                "student.dtype must be auto or float32 with mixed precision: the optimizer keeps fp32 master "
                "weights and autocast runs the forward in half precision"
            )
        if self.logging_steps < 1 or self.save_steps < 1:
            raise ConfigError("logging_steps and save_steps must be at least 1")

    def stages(self) -> list[tuple[StageName, StageConfig]]:
        """Return the stages to run, in order."""
        names: list[StageName] = ["pretrain", "finetune"] if self.stage == "both" else [self.stage]
        return [(name, getattr(self, name)) for name in names]
