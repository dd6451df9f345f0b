"""`alignkd eval`: greedy answers to a benchmark's questions, written to an answers file.

The loop is deliberately thin: read the questions, build each prompt with the benchmark's
suffix and the chat template, check that every image exists, then generate in batches and
append one JSON line per answer (see `alignkd.eval.answers` for the layout). Every line
records the benchmark, prompt variant, template, decoding settings, image aspect ratio and
model, so a score can always be traced to how its answers were made.

When a batch raises during generation, its questions are retried one at a time. A question
that still fails, or whose image cannot be prepared, is logged with its id, listed in
`<output>.failures.jsonl` and counted, and the command exits non-zero. No placeholder answer
is ever written for it, so the scorer reports it as missing rather than as wrong.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkd.config import ConfigError
from alignkd.data.templates import get_template
from alignkd.errors import DataError, ModelError
from alignkd.eval.answers import SETTING_KEYS, AnswerWriter, answer_key, format_id_list, read_existing_answers
from alignkd.eval.benchmarks import get_benchmark
from alignkd.eval.questions import Question

logger = logging.getLogger(__name__)

DEFAULT_ASPECT_RATIO = "pad"
SUPPORTED_ASPECT_RATIOS = ("pad", "resize")

# Number of failed questions that are logged one by one. Later failures are only counted and
# listed in the failures file, so that a systematic error does not flood the log.
_LOGGED_FAILURES = 20


@dataclass
class EvalConfig:
    """Settings of one `alignkd eval` run."""

    # Folder of the model to evaluate, loaded with `alignkd.models.loading.load_vlm`.
    model: Path
    # Registry name of the benchmark (see `alignkd.eval.benchmarks.BENCHMARKS`).
    benchmark: str
    # The benchmark's question file.
    questions: Path
    # The answers file to write (JSONL).
    output: Path
    # Folder that the question files' image paths are relative to. None when no question
    # names an image file (text-only questions, or MMBench's embedded images).
    images: Path | None = None
    # Questions generated together.
    batch_size: int = 8
    # Maximum generated tokens per answer.
    max_new_tokens: int = 128
    # Chat template passed to `encode_generation_prompt`. LLaVA-1.5 and MobileVLM evaluate
    # with "v1" (Vicuna v1).
    template: str = "v1"
    # Replacement for the template's system prompt; None keeps the template's own. It must
    # match the system prompt the model was trained with.
    system_prompt: str | None = None
    # Benchmark prompt variant. None uses the benchmark's default, which for TextVQA is the
    # variant that the question file already uses.
    prompt_variant: str | None = None
    # "pad" or "resize" (see `preprocess_image`). None uses the model config's
    # `image_aspect_ratio`, else "pad".
    image_aspect_ratio: str | None = None
    # Answer only the first `limit` questions, for quick checks. None answers all of them.
    limit: int | None = None
    # Keep the answers already in `output` and answer only the rest.
    resume: bool = False
    # Stop once more than this many questions have failed. None never stops early.
    max_failures: int | None = None
    # Model dtype name for `load_vlm` ("float32", "bfloat16", ...). None keeps the checkpoint's.
    dtype: str | None = None
    # Device for `load_vlm` ("cpu", "cuda:0"). None keeps the loader's default.
    device: str | None = None

    def validate(self) -> None:
        for name in ("batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be at least 1, got {self.limit}")
        if self.max_failures is not None and self.max_failures < 0:
            raise ConfigError(f"max_failures must be 0 or more, got {self.max_failures}")
        if self.image_aspect_ratio is not None and self.image_aspect_ratio not in SUPPORTED_ASPECT_RATIOS:
            raise ConfigError(
                f"image_aspect_ratio must be one of {', '.join(SUPPORTED_ASPECT_RATIOS)}, got {self.image_aspect_ratio!r}"
            )


@dataclass
class GenerationBackend:
    """The model functions that the evaluation loop calls. Tests pass a small fake.

    Fields:
        tokenizer: decodes generated ids (`batch_decode` with `skip_special_tokens`).
        encode_prompt: (user text, has_image) -> unexpanded prompt ids with the image placeholder.
        load_image: question -> image tensor [3, height, width]; called only for image questions.
        generate: (prompts, images) -> new token ids per prompt, EOS excluded, greedy.
        image_aspect_ratio: the aspect-ratio mode `load_image` applies, for the answers file.
        model_name: the model recorded in the answers file.
    """

    tokenizer: Any
    encode_prompt: Callable[[str, bool], list[int]]
    load_image: Callable[[Question], Any]
    generate: Callable[[list[list[int]], list[Any]], list[list[int]]]
    image_aspect_ratio: str
    model_name: str


@dataclass
class EvalSummary:
    """The outcome of a run: counts, failed question ids and timing of the generation loop."""

    output: Path
    written: int = 0
    skipped: int = 0
    failed_ids: list[Any] = field(default_factory=list)
    seconds: float = 0.0
    batch_size: int = 0

    @property
    def failed(self) -> int:
        return len(self.failed_ids)

    @property
    def questions_per_second(self) -> float | None:
        return self.written / self.seconds if self.seconds > 0 else None

    def format_text(self) -> str:
        """Return the report that `alignkd eval` prints."""
        lines = [f"Wrote {self.written} answers to {self.output}"]
        if self.skipped:
            lines[0] += f" ({self.skipped} already answered were kept)"
        rate = self.questions_per_second
        if rate is not None:
            lines.append(f"Generation took {self.seconds:.1f} s: {rate:.2f} questions/s at batch size {self.batch_size}")
        if self.failed:
            lines.append(
                f"FAILED: {self.failed} questions got no answer ({format_id_list(self.failed_ids)}); see "
                f"{failures_path(self.output)}. Fix the cause and rerun with --resume to answer only them."
            )
        return "\n".join(lines)


def failures_path(output: Path) -> Path:
    """Return the file listing the questions that failed in a run writing `output`."""
    return output.with_name(output.name + ".failures.jsonl")


def _torch_dtype(name: str | None) -> Any:
    import torch

    if name is None:
        return None
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"dtype {name!r} is not a floating-point torch dtype; use float32, bfloat16 or float16")
    return dtype


def build_backend(config: EvalConfig) -> GenerationBackend:
    """Load the model and wire the model, tokenizer and image functions of `alignkd` into a backend."""
    import torch
    from PIL import Image

    from alignkd.data.images import open_rgb_image, preprocess_image, to_rgb
    from alignkd.data.tokenization import encode_generation_prompt
    from alignkd.models.generation import greedy_generate
    from alignkd.models.loading import load_vlm

    # Fail before loading the model, not on every question.
    get_template(config.template, config.system_prompt)
    loaded = load_vlm(config.model, dtype=_torch_dtype(config.dtype), device=config.device)
    model_config = getattr(loaded.model, "config", None)
    aspect_ratio = config.image_aspect_ratio or getattr(model_config, "image_aspect_ratio", None) or DEFAULT_ASPECT_RATIO
    if aspect_ratio not in SUPPORTED_ASPECT_RATIOS:
        raise ConfigError(
            f"image aspect ratio {aspect_ratio!r} is not supported; pass --image-aspect-ratio with one of "
            f"{', '.join(SUPPORTED_ASPECT_RATIOS)}"
        )

    eos_token_id = loaded.tokenizer.eos_token_id
    pad_token_id = loaded.tokenizer.pad_token_id
    if eos_token_id is None:
        raise ModelError(f"{config.model}: the tokenizer has no eos_token_id, so generation cannot stop")
    if pad_token_id is None:
        pad_token_id = eos_token_id

    def encode_prompt(text: str, has_image: bool) -> list[int]:
        return encode_generation_prompt(loaded.tokenizer, config.template, text, has_image, config.system_prompt)

    def load_image(question: Question) -> Any:
        if question.image_bytes is not None:
            with Image.open(io.BytesIO(question.image_bytes)) as embedded:
                embedded.load()
                image = to_rgb(embedded)
        else:
            image = open_rgb_image(Path(config.images or ".") / question.image)
        return preprocess_image(image, loaded.image_processor, aspect_ratio=aspect_ratio)

    def generate(prompt_ids: list[list[int]], images: list[Any]) -> list[list[int]]:
        with torch.inference_mode():
            return greedy_generate(
                loaded.model,
                prompt_ids,
                images,
                max_new_tokens=config.max_new_tokens,
                eos_token_id=eos_token_id,
                pad_token_id=pad_token_id,
            )

    return GenerationBackend(
        tokenizer=loaded.tokenizer,
        encode_prompt=encode_prompt,
        load_image=load_image,
        generate=generate,
        image_aspect_ratio=aspect_ratio,
        model_name=str(config.model),
    )


def check_images(questions: list[Question], images: Path | None, question_file: Path) -> None:
    """Raise DataError listing every question whose image file does not exist, before any generation."""
    needs_files = [question for question in questions if question.image is not None]
    if not needs_files:
        return
    if images is None:
        raise DataError(f"{question_file}: {len(needs_files)} questions name image files; pass --images DIR")
    if not images.is_dir():
        raise DataError(f"images folder not found: {images}")
    missing = [
        f"{question.question_id} ({question.image})"
        for question in needs_files
        if not (images / question.image).is_file()
    ]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(needs_files)} images are missing under {images}: {format_id_list(missing)}. "
            "Check --images, or remove those questions from the question file"
        )


def _decoding_settings(config: EvalConfig) -> dict[str, Any]:
    return {"strategy": "greedy", "do_sample": False, "num_beams": 1, "max_new_tokens": config.max_new_tokens}


def _check_resume_settings(existing: dict[str, Any], settings: dict[str, Any], output: Path) -> None:
    for key in SETTING_KEYS:
        if json.dumps(existing.get(key), sort_keys=True) != json.dumps(settings[key], sort_keys=True):
            raise DataError(
                f"{output}: cannot resume, the existing answers have {key}={existing.get(key)!r} but this run has "
                f"{settings[key]!r}; use the same settings or write to a new --output"
            )


class _FailureLog:
    """Counts failed questions, logs the first ones and writes all of them to the failures file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failed_ids: list[Any] = []
        self._handle = None

    def record(self, question: Question, prompt: str, error: BaseException) -> None:
        self.failed_ids.append(question.question_id)
        if len(self.failed_ids) <= _LOGGED_FAILURES:
            logger.error(
                "question %r (%s) failed: %s: %s", question.question_id, question.source, type(error).__name__, error
            )
        elif len(self.failed_ids) == _LOGGED_FAILURES + 1:
            logger.error("more questions are failing; the rest are only listed in %s", self.path)
        if self._handle is None:
            self._handle = self.path.open("w", encoding="utf-8")
        line = {"question_id": question.question_id, "prompt": prompt, "error": f"{type(error).__name__}: {error}"}
        self._handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _generate_batch(
    backend: GenerationBackend, batch: list[tuple[Question, str]], failures: _FailureLog
) -> list[tuple[Question, str, str]]:
    """Return (question, prompt, answer) for each question of `batch` that could be answered."""
    prepared = []
    for question, prompt in batch:
        try:
            prompt_ids = backend.encode_prompt(prompt, question.has_image)
            image = backend.load_image(question) if question.has_image else None
        except Exception as error:  # noqa: BLE001 - every failure is logged, listed and counted
            failures.record(question, prompt, error)
            continue
        prepared.append((question, prompt, prompt_ids, image))
    if not prepared:
        return []

    try:
        outputs = backend.generate([item[2] for item in prepared], [item[3] for item in prepared])
    except Exception as error:  # noqa: BLE001 - retried alone below, then logged and counted
        if len(prepared) == 1:
            failures.record(prepared[0][0], prepared[0][1], error)
            return []
        logger.warning(
            "a batch of %d questions failed (%s: %s); retrying them one at a time",
            len(prepared),
            type(error).__name__,
            error,
        )
        results = []
        for question, prompt, _, _ in prepared:
            results.extend(_generate_batch(backend, [(question, prompt)], failures))
        return results

    if len(outputs) != len(prepared):
        raise ModelError(f"generation returned {len(outputs)} answers for {len(prepared)} prompts")
    texts = backend.tokenizer.batch_decode(outputs, skip_special_tokens=True)
    return [(question, prompt, text.strip()) for (question, prompt, _, _), text in zip(prepared, texts)]


def run_evaluation(config: EvalConfig, backend: GenerationBackend | None = None) -> EvalSummary:
    """Answer the questions of `config.questions` and write them to `config.output`.

    `backend` defaults to the model in `config.model` (see `build_backend`). Raises DataError
    for unreadable question files, missing images and resume conflicts, and ModelError when
    more than `config.max_failures` questions fail.
    """
    config.validate()
    benchmark = get_benchmark(config.benchmark)
    questions = benchmark.read_questions(config.questions)
    if config.limit is not None:
        questions = questions[: config.limit]
    variant = benchmark.resolve_variant(questions, config.prompt_variant, config.questions)
    prompts = [benchmark.build_prompt(question, variant) for question in questions]
    check_images(questions, config.images, config.questions)

    existing = read_existing_answers(config.output) if config.resume else None
    done = {record.key for record in existing.records} if existing else set()
    pending = [
        (question, prompt)
        for question, prompt in zip(questions, prompts)
        if answer_key(question.question_id, prompt) not in done
    ]
    logger.info("%s: %d questions, %d to answer, prompt variant %s", benchmark.name, len(questions), len(pending), variant)

    if backend is None:
        backend = build_backend(config)
    settings = {
        "benchmark": benchmark.name,
        "prompt_variant": variant,
        "template": config.template,
        # The prompt in effect, so that a file records "" and the template's default distinctly.
        "system_prompt": get_template(config.template, config.system_prompt).system_prompt,
        "decoding": _decoding_settings(config),
        "image_aspect_ratio": backend.image_aspect_ratio,
        "model": backend.model_name,
    }
    if existing:
        _check_resume_settings(existing.settings, settings, config.output)

    summary = EvalSummary(output=config.output, skipped=len(questions) - len(pending), batch_size=config.batch_size)
    failures = _FailureLog(failures_path(config.output))
    progress = _progress_bar(len(pending))
    start = time.perf_counter()
    try:
        with AnswerWriter(config.output, append=bool(existing)) as writer:
            for begin in range(0, len(pending), config.batch_size):
                batch = pending[begin : begin + config.batch_size]
                for question, prompt, text in _generate_batch(backend, batch, failures):
                    line = {"question_id": question.question_id, "prompt": prompt, "text": text, "image": question.image}
                    writer.write({**line, **question.extra, **settings})
                writer.flush()
                progress.update(len(batch))

                if config.max_failures is not None and len(failures.failed_ids) > config.max_failures:
                    raise ModelError(
                        f"stopped after {len(failures.failed_ids)} failed questions "
                        f"(--max-failures {config.max_failures}); see {failures.path}. The answers so far are in "
                        f"{config.output}; fix the cause and rerun with --resume"
                    )
            summary.written = writer.written
    finally:
        progress.close()
        failures.close()
        summary.seconds = time.perf_counter() - start

    summary.failed_ids = failures.failed_ids
    if not summary.failed_ids and failures.path.exists():
        failures.path.unlink()
    return summary


def _progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="question", desc="eval", disable=None)
