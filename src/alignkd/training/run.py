"""Run `alignkd distill`: load the models, check the data, train each stage, save the student.

Output layout:

    output_dir/
      config.yaml                   the resolved config (every default filled in)
      <stage>/checkpoint-N/         resumable checkpoints: student/, adapters, optimizer, ...
      <stage>/adapters.safetensors  the adapters at the end of the stage
      <stage>/log_history.json      every logged value
      <stage>/loss_curve.png        each loss term against the step
      <stage>/COMPLETED             written last; a completed stage is skipped on a rerun
      pretrain/student/             the student after stage 1 of "both" (it starts stage 2)
      student/                      the final student, in its native format

Running the same command again resumes: completed stages are skipped and an interrupted
stage continues from its newest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import TrainingArguments, set_seed

from alignkd.config import to_mapping
from alignkd.data.dataset import prepare_dataset
from alignkd.errors import AlignKDError, DataError
from alignkd.losses.objective import AlignKDObjective, ResolvedObjective
from alignkd.models.loading import LoadedVLM, get_vlm_adapter, load_vlm, read_config, save_vlm
from alignkd.training.checkpoints import find_resumable_checkpoint
from alignkd.training.config import DistillConfig, ModelSource, StageConfig
from alignkd.training.deepspeed import prepare_teacher_for_zero3, resolve_deepspeed_config, zero_stage
from alignkd.training.vocabulary import shared_tokenizer_length
from alignkd.training.module import DistillationModule
from alignkd.training.plots import plot_loss_history
from alignkd.training.teacher import LiveTeacher, TeacherSource
from alignkd.training.trainer import DistillationTrainer, load_adapters, save_adapters

logger = logging.getLogger(__name__)

COMPLETED_MARKER = "COMPLETED"
FINAL_STUDENT = "student"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StageResult:
    """The outputs of one training stage."""

    name: str
    student_dir: Path
    stage_dir: Path
    log_history: list[dict[str, Any]]


def teacher_dtype(source: ModelSource, precision: str) -> torch.dtype:
    """Return the teacher's dtype: half precision under mixed precision, since it keeps no master weights."""
    if source.dtype != "auto":
        return _DTYPES[source.dtype]
    return _PRECISION_DTYPES[precision]


def student_dtype(source: ModelSource) -> torch.dtype:
    """Return the student's dtype: fp32 unless the config sets one, since autocast handles mixed precision."""
    return torch.float32 if source.dtype == "auto" else _DTYPES[source.dtype]


def is_main_process() -> bool:
    """True in a single process and in rank 0 of a multi-process launch."""
    return int(os.environ.get("RANK", "0")) == 0


# Settings that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = {"logging_steps", "save_steps", "save_total_limit", "dataloader_num_workers"}


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        changed = []
        for key in sorted(set(old) | set(new)):
            dotted = f"{prefix}.{key}" if prefix else key
            changed += _changed_keys(old.get(key), new.get(key), dotted)
        return changed
    return [] if old == new else [prefix]


def check_same_config(config: DistillConfig, output_dir: Path) -> None:
    """Refuse to resume or reuse a run whose saved config differs from `config`.

    Completed stages are skipped and interrupted ones resumed, which is only right when the
    run was started with the same settings.
    """
    saved_file = output_dir / "config.yaml"
    if not saved_file.is_file():
        return
    saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
    saved.get("loss", {}).pop("resolved", None)
    changed = [key for key in _changed_keys(saved, to_mapping(config)) if key.split(".")[0] not in RESUMABLE_CHANGES]
    started = any((output_dir / name).is_dir() for name in ("pretrain", "finetune"))
    if changed and started:
        raise AlignKDError(
            f"{output_dir} holds a run started with a different config (changed: {', '.join(changed)}). "
            "Rerun with the same config to resume it, or choose a new output_dir"
        )


def write_resolved_config(config: DistillConfig, output_dir: Path) -> None:
    """Save the config with every default filled in, so a run can be repeated exactly."""
    data = to_mapping(config)
    data["loss"]["resolved"] = to_mapping(config.loss.resolved())
    output_dir.mkdir(parents=True, exist_ok=True)
    with (output_dir / "config.yaml").open("w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle, sort_keys=False)


def build_objective(
    settings: ResolvedObjective,
    student: LoadedVLM,
    teacher_model: torch.nn.Module | None,
    teacher_sizes: dict[str, int] | None,
    tokenizer_length: int | None = None,
) -> AlignKDObjective:
    """Create the objective, sizing the adapters from the two models.

    `tokenizer_length` is the number of token ids that teacher and student share (see
    `shared_tokenizer_length`); the student tokenizer's length when None.
    """
    student_adapter = get_vlm_adapter(student.model)
    sizes: dict[str, int | None] = {"teacher_heads": None, "teacher_width": None}
    if teacher_model is not None:
        teacher_adapter = get_vlm_adapter(teacher_model)
        sizes = {"teacher_heads": teacher_adapter.num_attention_heads, "teacher_width": teacher_adapter.hidden_size}
    elif teacher_sizes is not None:
        sizes = dict(teacher_sizes)
    return AlignKDObjective(
        settings,
        student_heads=student_adapter.num_attention_heads,
        student_width=student_adapter.hidden_size,
        tokenizer_length=len(student.tokenizer) if tokenizer_length is None else tokenizer_length,
        **sizes,
    )


def prepare_student(
    student: LoadedVLM,
    train_language_model: bool,
    gradient_checkpointing: bool,
    capture_attention: bool,
    train_vision_tower: bool = False,
) -> None:
    """Freeze the vision tower (and optionally the LLM); enable gradient checkpointing."""
    model = student.model
    adapter = get_vlm_adapter(model)
    model.requires_grad_(True)
    if not train_vision_tower:
        adapter.vision_tower.requires_grad_(False)
        adapter.vision_tower.eval()
    if not train_language_model:
        adapter.language_model.requires_grad_(False)
        adapter.projector.requires_grad_(True)

    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if capture_attention:
            # The probe records layer 0's attention during its forward; recomputing that layer
            # in backward would record it again, so layer 0 keeps its activations.
            first_layer = adapter.decoder.layers[0]
            if hasattr(first_layer, "gradient_checkpointing"):
                first_layer.gradient_checkpointing = False


def training_arguments(config: DistillConfig, stage: StageConfig, stage_dir: Path) -> TrainingArguments:
    optimization = stage.optimization
    deepspeed = resolve_deepspeed_config(config.deepspeed)
    return TrainingArguments(
        output_dir=str(stage_dir),
        per_device_train_batch_size=optimization.per_device_batch_size,
        gradient_accumulation_steps=optimization.gradient_accumulation_steps,
        learning_rate=optimization.learning_rate,
        weight_decay=optimization.weight_decay,
        lr_scheduler_type=optimization.lr_scheduler,
        warmup_steps=optimization.warmup_ratio,
        num_train_epochs=optimization.num_epochs,
        max_steps=optimization.max_steps,
        max_grad_norm=optimization.max_grad_norm,
        bf16=config.precision == "bf16",
        fp16=config.precision == "fp16",
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        dataloader_num_workers=config.dataloader_num_workers,
        remove_unused_columns=False,
        report_to="none",
        deepspeed=deepspeed,
        use_cpu=not torch.cuda.is_available(),
        # Text-only micro-batches leave the projector unused on that rank.
        ddp_find_unused_parameters=True,
        disable_tqdm=False,
        save_only_model=False,
        train_sampling_strategy="random" if optimization.shuffle else "sequential",
    )


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide tokenization, numerics and training."""
    import accelerate
    import tokenizers
    import transformers

    import alignkd

    return {
        "alignkd": alignkd.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "accelerate": accelerate.__version__,
    }


def write_run_metadata(stage_dir: Path, config: DistillConfig, stage: StageConfig, setup: StageSetup) -> None:
    """Record what a stage ran with: library versions, the tokenizer, and the data check's counts.

    A tokenizer upgrade can change token ids; with the versions on record, a later run whose
    labels differ can be traced to it.
    """
    report = setup.data_report
    metadata = {
        "versions": library_versions(),
        "tokenizer": {
            "class": type(setup.student.tokenizer).__name__,
            "length": len(setup.student.tokenizer),
        },
        "data": {
            "path": str(stage.data.path),
            "template": stage.data.template,
            "versions": getattr(report, "versions", None),
            "samples_kept": getattr(report, "kept_samples", None),
            # Samples the pre-flight check removed, per reason; skips during training are in log_history.json.
            "samples_removed": {kind.value: count for kind, count in getattr(report, "removed_counts", {}).items()},
        },
        "student": str(config.student.path),
        "teacher": str(config.teacher.path) if config.teacher is not None else None,
        "teacher_cache": config.teacher_cache,
    }
    (stage_dir / "run_metadata.json").write_text(json.dumps(metadata, indent=2, default=str) + "\n", encoding="utf-8")


def load_teacher(config: DistillConfig, settings: ResolvedObjective) -> tuple[TeacherSource | None, LoadedVLM | None]:
    """Load the live teacher, or the teacher cache, or nothing for the "sft" preset."""
    if not settings.needs_teacher:
        return None, None
    cached = None
    if config.teacher_cache is not None:
        from alignkd.cache.reader import CachedTeacher  # noqa: PLC0415 - optional feature

        cached = CachedTeacher.open(config.teacher_cache, config=config)
        if not cached.needs_live_teacher:
            return cached, None
    dtype = teacher_dtype(config.teacher, config.precision)
    device = "cuda" if torch.cuda.is_available() and int(os.environ.get("LOCAL_RANK", "-1")) < 0 else None
    if torch.cuda.is_available() and int(os.environ.get("LOCAL_RANK", "-1")) >= 0:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    loaded = load_vlm(config.teacher.path, dtype=dtype, device=device)
    logger.info("Loaded the teacher from %s in %s", config.teacher.path, dtype)
    if cached is not None:
        # A partial cache: the live teacher computes the samples the cache does not hold.
        cached.attach_live_teacher(LiveTeacher(loaded.model), loaded)
        return cached, loaded
    return LiveTeacher(loaded.model), loaded


@dataclass
class StageSetup:
    """A stage ready to train: the trainer and the parts it was built from."""

    trainer: DistillationTrainer
    module: DistillationModule
    student: LoadedVLM
    stage_dir: Path
    data_report: Any = None


def build_stage(
    config: DistillConfig,
    name: str,
    stage: StageConfig,
    *,
    student_path: str | Path,
    previous_adapters: Path | None,
    teacher: TeacherSource | None,
    teacher_loaded: LoadedVLM | None,
) -> StageSetup:
    """Load the student, check the data and build the trainer of one stage."""
    settings = config.loss.resolved()
    stage_dir = Path(config.output_dir) / name
    stage_dir.mkdir(parents=True, exist_ok=True)
    set_seed(config.seed)

    student = load_vlm(student_path, dtype=student_dtype(config.student))
    prepare_student(
        student,
        stage.optimization.train_language_model,
        config.gradient_checkpointing,
        settings.capture_student_attention,
        stage.optimization.train_vision_tower,
    )
    student_adapter = get_vlm_adapter(student.model)

    teacher_model = teacher_loaded.model if teacher_loaded is not None else None
    teacher_sizes = getattr(teacher, "model_sizes", None)
    tokenizer_length = None
    if teacher_loaded is not None:
        tokenizer_length = shared_tokenizer_length(teacher_loaded.tokenizer, student.tokenizer)
    objective = build_objective(settings, student, teacher_model, teacher_sizes, tokenizer_length)
    module = DistillationModule(student.model, objective, teacher)
    if previous_adapters is not None and load_adapters(module, previous_adapters):
        logger.info("Carried the adapters over from %s", previous_adapters)

    # A cached teacher's vision tokens count in the length check, as a loaded teacher's do below.
    num_vision_tokens = max(student_adapter.num_vision_tokens, getattr(teacher, "num_vision_tokens", 0))
    processors = {"student": student.image_processor}
    if teacher_loaded is not None:
        teacher_adapter = get_vlm_adapter(teacher_loaded.model)
        num_vision_tokens = max(num_vision_tokens, teacher_adapter.num_vision_tokens)
        processors["teacher"] = teacher_loaded.image_processor

    dataset, data_report = prepare_dataset(stage.data, student.tokenizer, processors, num_vision_tokens)
    if hasattr(teacher, "bind"):
        # A cached teacher checks its stage against this run and maps dataset rows to its entries.
        teacher.bind(name, stage, dataset, student.tokenizer)
    args = training_arguments(config, stage, stage_dir)

    optimization = stage.optimization
    learning_rates = {
        "language_model": optimization.learning_rate,
        "projector": optimization.resolved_projector_learning_rate,
        "adapters": optimization.resolved_adapter_learning_rate,
    }

    def sampler_factory(trainer: DistillationTrainer):
        return dataset.sampler(
            batch_size=trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps,
            world_size=trainer.args.world_size,
            seed=config.seed,
        )

    trainer = DistillationTrainer(
        model=module,
        args=args,
        train_dataset=dataset,
        data_collator=dataset.collator(),
        learning_rates=learning_rates,
        num_vision_tokens=student_adapter.num_vision_tokens,
        tokenizer=student.tokenizer,
        image_processor=student.image_processor,
        sampler_factory=sampler_factory if optimization.shuffle and stage.data.group_by != "none" else None,
        skip_counts=dataset.runtime_problem_counts,
    )

    if teacher_model is not None and zero_stage(args.deepspeed) == 3:
        teacher.model = prepare_teacher_for_zero3(teacher_model, trainer.accelerator)
    return StageSetup(trainer=trainer, module=module, student=student, stage_dir=stage_dir, data_report=data_report)


def run_stage(
    config: DistillConfig,
    name: str,
    stage: StageConfig,
    *,
    student_path: str | Path,
    student_output_dir: Path,
    previous_adapters: Path | None,
    teacher: TeacherSource | None,
    teacher_loaded: LoadedVLM | None,
) -> StageResult:
    """Train one stage (resuming it if it was interrupted) and save its student and adapters."""
    setup = build_stage(
        config,
        name,
        stage,
        student_path=student_path,
        previous_adapters=previous_adapters,
        teacher=teacher,
        teacher_loaded=teacher_loaded,
    )
    trainer, stage_dir = setup.trainer, setup.stage_dir

    resume = find_resumable_checkpoint(stage_dir)
    if resume is not None:
        logger.info("Resuming stage %s from %s", name, resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)

    if trainer.args.should_save:
        student = setup.student
        save_vlm(student.model, student.tokenizer, student.image_processor, student_output_dir)
        save_adapters(setup.module, stage_dir)
        history = trainer.state.log_history
        (stage_dir / "log_history.json").write_text(json.dumps(history, indent=1) + "\n", encoding="utf-8")
        plot_loss_history(history, stage_dir / "loss_curve.png", title=f"{name} stage")
        write_run_metadata(stage_dir, config, stage, setup)
        (stage_dir / COMPLETED_MARKER).write_text("done\n", encoding="utf-8")
        logger.info("Stage %s finished; student saved to %s", name, student_output_dir)
    trainer.accelerator.wait_for_everyone()
    return StageResult(name, student_output_dir, stage_dir, list(trainer.state.log_history))


def warn_single_process_launch() -> None:
    """Warn when `accelerate launch --num_processes N` silently started one process.

    Without GPUs and without --multi_gpu, accelerate's simple launcher sets a rendezvous
    address for N processes but starts only one.
    """
    if "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ and "ACCELERATE_USE_CPU" in os.environ:
        logger.warning(
            "accelerate started a single process. To train with several processes on a machine without "
            "GPUs, launch with `accelerate launch --multi_gpu --num_processes N`: the processes then use "
            "the CPU and the gloo backend"
        )


def check_input_paths(config: DistillConfig) -> None:
    """Raise for a missing model folder or data file before any model is loaded.

    Loading a large teacher takes minutes, so a typo in a later path should not wait for it.
    """
    read_config(Path(config.student.path))
    # With a teacher cache the teacher folder is read only if the cache is partial, which the
    # cache reader checks itself.
    if config.teacher is not None and config.teacher_cache is None and config.loss.resolved().needs_teacher:
        read_config(Path(config.teacher.path))
    for name, stage in config.stages():
        data_path = Path(stage.data.path)
        if not data_path.is_file():
            raise DataError(f"{name}.data.path: data file not found: {data_path}")


def run_distillation(config: DistillConfig) -> list[StageResult]:
    """Run every stage of `config` in order; return what each produced."""
    warn_single_process_launch()
    output_dir = Path(config.output_dir)
    check_same_config(config, output_dir)
    # Before the output folder is written, so that a mistyped path leaves nothing behind.
    check_input_paths(config)
    if is_main_process():
        write_resolved_config(config, output_dir)

    settings = config.loss.resolved()
    set_seed(config.seed)
    teacher, teacher_loaded = load_teacher(config, settings)

    results = []
    student_path: str | Path = config.student.path
    previous_adapters: Path | None = None
    stages = config.stages()
    for index, (name, stage) in enumerate(stages):
        stage_dir = output_dir / name
        is_last = index == len(stages) - 1
        student_output_dir = output_dir / FINAL_STUDENT if is_last else stage_dir / FINAL_STUDENT

        if (stage_dir / COMPLETED_MARKER).is_file():
            logger.info("Stage %s already completed in %s; skipping it", name, stage_dir)
            history_file = stage_dir / "log_history.json"
            history = json.loads(history_file.read_text(encoding="utf-8")) if history_file.is_file() else []
            results.append(StageResult(name, student_output_dir, stage_dir, history))
        else:
            results.append(
                run_stage(
                    config,
                    name,
                    stage,
                    student_path=student_path,
                    student_output_dir=student_output_dir,
                    previous_adapters=previous_adapters,
                    teacher=teacher,
                    teacher_loaded=teacher_loaded,
                )
            )
        student_path = student_output_dir
        previous_adapters = stage_dir
    return results
