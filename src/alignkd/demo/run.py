"""`alignkd demo`: Align-KD against two baselines on the embedded digits task, end to end.

Steps, all through the same code that real data and models use:

1. Build the task (LLaVA JSON, PNGs, test questions and answers) from scikit-learn's digits.
2. Take the teacher: the one shipped with alignkd, or train one (`--train-teacher`).
3. For each seed, initialise a student that shares the teacher's frozen vision tower, and
   train a copy of it with each preset (sft, vanilla-kd, paper) on the same steps and seed
   with `alignkd distill`'s code.
4. Evaluate teacher and students with the short-answer benchmark of `alignkd eval`/`score`.
5. Write the report: the table (Markdown and JSON), a bar chart, loss curves and the
   first-layer text-to-vision attention of teacher and students over a test image.

Output folder layout: demo_settings.json, task/, teacher/ (a copy of the shipped teacher),
teacher-training/ (only with --train-teacher), students/init-seed<N>/, runs/<preset>-seed<N>/
(each a complete `alignkd distill` output), eval/, report/. Running the demo again with the
same settings reuses completed runs. A folder written with other settings is rejected before
anything in it changes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignkd.config import from_mapping
from alignkd.data.images import open_rgb_image, preprocess_image
from alignkd.data.tokenization import encode_generation_prompt
from alignkd.demo.build import DemoTaskConfig, DemoTaskPaths, build_demo_task
from alignkd.demo.models import (
    STUDENT_SPEC,
    TEACHER_SPEC,
    VISION_TOKEN_GRID,
    count_parameters,
    has_shipped_teacher,
    init_student,
    shipped_teacher_dir,
)
from alignkd.demo.plots import plot_accuracy, plot_attention_maps, plot_loss_curves
from alignkd.demo.report import DemoResults, format_table, write_report_tables
from alignkd.demo.tokenizer import check_single_token_answers, train_demo_tokenizer
from alignkd.errors import AlignKDError
from alignkd.eval.run import EvalConfig, run_evaluation
from alignkd.eval.score import score_answers
from alignkd.models.forward import forward_vlm
from alignkd.models.loading import load_vlm, save_vlm
from alignkd.models.spec import init_model
from alignkd.training.config import DistillConfig
from alignkd.training.plots import loss_points
from alignkd.training.run import run_distillation

logger = logging.getLogger(__name__)

PRESETS = ("sft", "vanilla-kd", "paper")

SETTINGS_FILE = "demo_settings.json"

# Settings that change what the task, the teacher or a student run contain. Seeds, presets
# and the evaluation limit only add or redo runs, so they may change between invocations.
RUN_DEFINING_SETTINGS = (
    "num_train",
    "num_test",
    "student_steps",
    "batch_size",
    "learning_rate",
    "top_k",
    "teacher",
    "train_teacher",
    "teacher_steps",
    "teacher_learning_rate",
    "logging_points",
)

# The demo trains and evaluates with the "v1" template without its system prompt: the prompt
# carries no information for this task and would double the length of every sequence.
DEMO_SYSTEM_PROMPT = ""
BENCHMARK = "short-answer"


@dataclass
class DemoConfig:
    """Settings of `alignkd demo`. The defaults are the README's run."""

    output_dir: str = "alignkd-demo"
    """Folder for the task, the students, the evaluations and the report."""

    seeds: int = 1
    """Number of student seeds; with more than one the report gives mean and spread."""

    first_seed: int = 0
    """Seed of the first student; the others count up from it."""

    presets: list[str] = field(default_factory=lambda: list(PRESETS))
    """Loss presets to compare, each trained from the same student initialisation."""

    student_steps: int = 1500
    """Optimizer steps per student."""

    batch_size: int = 64
    """Samples per optimizer step."""

    learning_rate: float = 7.0e-4
    """Peak learning rate of the students (cosine schedule)."""

    top_k: int = 1
    """Focus tokens of the vision term: one of the 4 vision tokens (one per grid cell)."""

    eval_questions: int | None = None
    """Evaluate on the first N test questions only; None uses all of them."""

    num_train: int = 20_000
    """Training questions in the task."""

    num_test: int = 1_000
    """Held-out test questions in the task."""

    teacher: str | None = None
    """Folder of the teacher; None uses the shipped one (or trains one if none ships)."""

    train_teacher: bool = False
    """Train the teacher here instead of using the shipped one."""

    teacher_steps: int = 6000
    """Optimizer steps of teacher training."""

    teacher_learning_rate: float = 7.0e-4
    """Peak learning rate of teacher training."""

    logging_points: int = 30
    """Log lines per training run (for the loss curves)."""

    def validate(self) -> None:
        unknown = [preset for preset in self.presets if preset not in ("sft", "vanilla-kd", "paper", "released-code")]
        if unknown:
            raise AlignKDError(f"unknown presets {unknown}; choose from sft, vanilla-kd, paper, released-code")
        if self.seeds < 1 or self.student_steps < 1 or self.batch_size < 1:
            raise AlignKDError("seeds, student_steps and batch_size must be at least 1")


def _distill_mapping(
    config: DemoConfig, *, student: Path, teacher: Path | None, output_dir: Path, task: DemoTaskPaths, preset: str, seed: int,
    steps: int, learning_rate: float, train_vision_tower: bool = False,
) -> dict[str, Any]:
    """Build the `alignkd distill` config of one demo run."""
    mapping: dict[str, Any] = {
        "student": {"path": str(student)},
        "output_dir": str(output_dir),
        "stage": "finetune",
        "finetune": {
            "data": {
                "path": str(task.train_json),
                "image_folder": str(task.image_folder),
                "template": "v1",
                "system_prompt": DEMO_SYSTEM_PROMPT,
                "max_length": 256,
                # Every demo sample has an image, so grouping would only reorder them.
                "group_by": "none",
                "image_check": "exists",
            },
            "optimization": {
                "learning_rate": learning_rate,
                "per_device_batch_size": config.batch_size,
                "max_steps": steps,
                "warmup_ratio": 0.03,
                "train_vision_tower": train_vision_tower,
            },
        },
        "loss": {"preset": preset, "top_k": config.top_k},
        "seed": seed,
        "logging_steps": max(steps // config.logging_points, 1),
        "save_steps": steps,
        "save_total_limit": 1,
    }
    if teacher is not None:
        mapping["teacher"] = {"path": str(teacher)}
    return mapping


def _train(mapping: dict[str, Any]) -> Path:
    """Run `alignkd distill` on a config mapping; a completed run is reused."""
    results = run_distillation(from_mapping(DistillConfig, mapping))
    return results[-1].student_dir


def train_teacher(config: DemoConfig, task: DemoTaskPaths, output_dir: Path) -> Path:
    """Train the demo teacher from scratch (vision tower included) with the supervised loss."""
    tokenizer = train_demo_tokenizer(output_dir=output_dir / "tokenizer")
    check_single_token_answers(tokenizer)
    initial = init_model(TEACHER_SPEC, tokenizer, seed=config.first_seed)
    init_dir = output_dir / "teacher-init"
    save_vlm(initial.model, initial.tokenizer, initial.image_processor, init_dir)

    mapping = _distill_mapping(
        config,
        student=init_dir,
        teacher=None,
        output_dir=output_dir / "teacher-run",
        task=task,
        preset="sft",
        seed=config.first_seed,
        steps=config.teacher_steps,
        learning_rate=config.teacher_learning_rate,
        train_vision_tower=True,
    )
    return _train(mapping)


def evaluate(model_dir: Path, task: DemoTaskPaths, output: Path, limit: int | None) -> dict[str, Any]:
    """Answer the test questions with `model_dir` and score them; return accuracy per kind."""
    eval_config = EvalConfig(
        model=model_dir,
        benchmark=BENCHMARK,
        questions=task.test_questions,
        output=output,
        images=task.image_folder,
        batch_size=64,
        max_new_tokens=4,
        limit=limit,
        system_prompt=DEMO_SYSTEM_PROMPT,
    )
    summary = run_evaluation(eval_config)
    if summary.failed:
        raise AlignKDError(f"{summary.failed} test questions failed for {model_dir}; see {output}.failures.jsonl")
    # With a question limit only the first questions have answers.
    report = score_answers(BENCHMARK, output, [task.test_answers], allow_missing=limit is not None)
    per_kind = {kind: values["accuracy"] for kind, values in report.details.items()}
    return {"overall": report.metrics["accuracy"], "per_kind": per_kind, "questions": report.counts["questions"]}


def attention_over_image(model_dir: Path, task: DemoTaskPaths, question: dict[str, Any]) -> torch.Tensor:
    """First-layer text-to-vision attention [heads, text, vision] of one test question."""
    loaded = load_vlm(model_dir)
    image = open_rgb_image(Path(task.image_folder) / question["image"])
    pixels = preprocess_image(image, loaded.image_processor, "pad")
    prompt = encode_generation_prompt(loaded.tokenizer, "v1", question["text"], True, DEMO_SYSTEM_PROMPT)
    input_ids = torch.tensor([prompt])
    with torch.no_grad():
        output = forward_vlm(
            loaded.model,
            input_ids,
            torch.ones_like(input_ids),
            pixel_values=pixels[None],
            image_mask=torch.tensor([True]),
            logit_positions="none",
            capture_attention=True,
        )
    return output.text_vision_attention[0]


def check_output_settings(config: DemoConfig, output_dir: Path) -> None:
    """Raise when `output_dir` contains a demo run with other run-defining settings.

    The check runs before anything in the folder changes, so a refused run leaves the earlier
    task, students and report as they were.
    """
    settings_path = output_dir / SETTINGS_FILE
    if not settings_path.is_file():
        return

    try:
        previous = json.loads(settings_path.read_text())
    except json.JSONDecodeError as error:
        raise AlignKDError(
            f"{settings_path} is not valid JSON ({error}); delete {output_dir} to start the demo over"
        ) from error

    current = _run_defining_settings(config)
    changed = [
        f"{name} {previous.get(name)!r} -> {value!r}" for name, value in current.items() if previous.get(name) != value
    ]
    if changed:
        raise AlignKDError(
            f"{output_dir} contains a demo run with other settings (changed: {', '.join(changed)}). "
            f"Pass --output with a new folder, or delete {output_dir} to start over"
        )


def _run_defining_settings(config: DemoConfig) -> dict[str, Any]:
    settings = dataclasses.asdict(config)
    return {name: settings[name] for name in RUN_DEFINING_SETTINGS}


def run_demo(config: DemoConfig) -> DemoResults:
    """Run the whole demo and write its report; return the results."""
    config.validate()
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    check_output_settings(config, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / SETTINGS_FILE).write_text(json.dumps(_run_defining_settings(config), indent=2) + "\n")

    logger.info("Building the digits task in %s", output_dir / "task")
    task = build_demo_task(output_dir / "task", DemoTaskConfig(num_train=config.num_train, num_test=config.num_test))

    if config.teacher is not None:
        teacher_dir = Path(config.teacher)
    elif config.train_teacher or not has_shipped_teacher():
        logger.info("Training the teacher (%d steps)", config.teacher_steps)
        teacher_dir = train_teacher(config, task, output_dir / "teacher-training")
    else:
        # A copy beside the other outputs, so that configs (examples/configs) can name it.
        teacher_dir = output_dir / "teacher"
        if not (teacher_dir / "config.json").is_file():
            shutil.copytree(shipped_teacher_dir(), teacher_dir, dirs_exist_ok=True)
    teacher = load_vlm(teacher_dir)
    check_single_token_answers(teacher.tokenizer)

    results = DemoResults(
        settings=dataclasses.asdict(config),
        parameters={"teacher": count_parameters(teacher_dir)},
    )
    results.accuracy["teacher"] = [evaluate(teacher_dir, task, output_dir / "eval" / "teacher.jsonl", config.eval_questions)]

    histories: dict[str, list] = {}
    first_students: dict[str, Path] = {}
    for seed in range(config.first_seed, config.first_seed + config.seeds):
        init_dir = init_student(teacher, STUDENT_SPEC, seed, output_dir / "students" / f"init-seed{seed}")
        results.parameters.setdefault("student", count_parameters(init_dir))
        for preset in config.presets:
            run_name = f"{preset}-seed{seed}"
            logger.info("Training student %s (%d steps)", run_name, config.student_steps)
            mapping = _distill_mapping(
                config,
                student=init_dir,
                teacher=teacher_dir,
                output_dir=output_dir / "runs" / run_name,
                task=task,
                preset=preset,
                seed=seed,
                steps=config.student_steps,
                learning_rate=config.learning_rate,
            )
            student_dir = _train(mapping)
            history = json.loads((output_dir / "runs" / run_name / "finetune" / "log_history.json").read_text())
            if seed == config.first_seed:
                histories[preset] = loss_points(history)
                first_students[preset] = student_dir
            scores = evaluate(student_dir, task, output_dir / "eval" / f"{run_name}.jsonl", config.eval_questions)
            results.accuracy.setdefault(preset, []).append(scores)

    results.seconds = time.perf_counter() - started
    write_report(results, task, teacher_dir, first_students, histories, output_dir / "report")
    return results


def write_report(
    results: DemoResults,
    task: DemoTaskPaths,
    teacher_dir: Path,
    students: dict[str, Path],
    histories: dict[str, list],
    report_dir: Path,
) -> None:
    """Write the table (Markdown and JSON), the bar chart, loss curves and attention maps."""
    report_dir.mkdir(parents=True, exist_ok=True)
    write_report_tables(results, report_dir)

    # The chart takes fractions; the table keeps percentages.
    means = {name: _fractions(results.mean_per_kind(name)) for name in results.accuracy}
    spreads = None
    if results.num_seeds > 1:
        spreads = {name: _fractions(results.spread_per_kind(name)) for name in results.accuracy}
    plot_accuracy(means, report_dir / "accuracy.png", spread=spreads, title="Test accuracy per question kind")
    if histories:
        plot_loss_curves(histories, report_dir / "loss_curves.png", smoothing_window=3, title="Student training loss")

    question = json.loads(Path(task.test_questions).read_text(encoding="utf-8").splitlines()[0])
    attentions = {"teacher": attention_over_image(teacher_dir, task, question)}
    for preset, student_dir in students.items():
        attentions[preset] = attention_over_image(student_dir, task, question)
    image = np.asarray(open_rgb_image(Path(task.image_folder) / question["image"]))
    plot_attention_maps(
        image,
        attentions,
        VISION_TOKEN_GRID,
        report_dir / "attention.png",
        per_head=True,
        title=f"First-layer attention from text to vision tokens\n{question['text'].splitlines()[0]}",
    )
    logger.info("Wrote the report to %s", report_dir)


def _fractions(percentages: dict[str, float]) -> dict[str, float]:
    return {name: value / 100.0 for name, value in percentages.items()}


def summarize(results: DemoResults) -> str:
    """Return the table that `alignkd demo` prints."""
    return format_table(results)

