"""The pre-flight data check: every sample's text, tokens, length and image, before training starts.

For each record, in this order, the first problem found is recorded and the later checks
are not run:

1. The record parses and is a valid LLaVA conversation (`alignkd.data.conversation`).
2. The conversation fits the template and yields supervised tokens (`alignkd.data.tokenization`).
3. Its length, with the image expanded to `num_vision_tokens`, is within `max_length`.
4. Its image file passes the check of depth `image_check` (`alignkd.data.images`).

Tokenization runs in batches through the fast tokenizer, and image checks run in a thread
pool, so the check scales to data sets of millions of samples. Only per-sample lengths and
status codes are kept in memory, not the token ids.

Then the policy splits the problems into errors (the run stops) and removed samples. The
run also stops when the removed fraction is above the configured threshold, or when no
sample is left.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from alignkd.data.config import DataConfig
from alignkd.data.conversation import LlavaSample, describe_sample, parse_sample, read_sample_id
from alignkd.data.images import ImageFileProblem, ImageLimits, check_image_file
from alignkd.data.problems import ProblemKind, SampleProblem
from alignkd.data.records import LlavaRecords
from alignkd.data.report import DataReport, LengthHistogram
from alignkd.data.templates import get_template
from alignkd.data.tokenization import ConversationEncoder, EncodedSample
from alignkd.errors import DataError

logger = logging.getLogger(__name__)

# Samples per batched tokenizer call. The Python work of building labels dominates the
# time, so larger batches gain little from the tokenizer's threads, while their many live
# objects make garbage-collection passes slower (measured with benchmarks/data_throughput.py).
_ENCODE_BATCH_SIZE = 16

# Status code 0 means "kept"; a problem kind is stored as 1 + its position in ProblemKind.
_KIND_CODES = {kind: code for code, kind in enumerate(ProblemKind, start=1)}

NOTE_PLACEHOLDER_ADDED = "image_placeholder_added"
NOTE_TRUNCATED_ACCEPTED = "truncated_image_accepted"


@dataclass
class CheckResult:
    """The report and the kept samples of a data check.

    Attributes:
        report: counts, examples and the length histogram.
        rows: int64 array [kept]; the record row of each kept sample.
        lengths: int64 array [kept]; expanded sequence length of each kept sample.
        has_image: bool array [kept].
    """

    report: DataReport
    rows: np.ndarray
    lengths: np.ndarray
    has_image: np.ndarray


def image_root(config: DataConfig) -> Path:
    """Return the folder that image paths are relative to, checking that it exists."""
    if config.image_folder is None:
        return config.path.parent
    if not config.image_folder.is_dir():
        raise DataError(
            f"image folder not found: {config.image_folder}. Set data.image_folder to the folder of the images"
        )
    return config.image_folder


def image_limits(config: DataConfig) -> ImageLimits:
    return ImageLimits(max_pixels=config.max_image_pixels, max_bytes=config.max_image_bytes)


def check_data(
    config: DataConfig,
    tokenizer: Any,
    num_vision_tokens: int,
    records: LlavaRecords | None = None,
    progress: bool = True,
) -> CheckResult:
    """Check every sample of `config.path` and apply the error policy to what is found.

    Args:
        config: the data config.
        tokenizer: the fast tokenizer used for training.
        num_vision_tokens: vision tokens per image (the largest among the models in use),
            counted against `max_length`.
        records: the already opened records of `config.path`, if any.
        progress: show a progress bar.

    Raises:
        DataError: the data file, the image folder or the tokenizer cannot be used at all.
            Problems of single samples never raise here: they are in the report.
    """
    if num_vision_tokens < 0:
        raise ValueError(f"num_vision_tokens must be 0 or more, got {num_vision_tokens}")

    records = records if records is not None else LlavaRecords(config.path)
    encoder = ConversationEncoder(tokenizer, get_template(config.template, config.system_prompt))
    scan = _Scan(config, records, encoder, num_vision_tokens, image_root(config))
    scan.run(progress)
    return scan.result()


class _Scan:
    """The state of one pass over the records."""

    def __init__(
        self,
        config: DataConfig,
        records: LlavaRecords,
        encoder: ConversationEncoder,
        num_vision_tokens: int,
        root: Path,
    ):
        self.config = config
        self.records = records
        self.encoder = encoder
        self.num_vision_tokens = num_vision_tokens
        self.root = root

        total = len(records)
        self.status = np.zeros(total, dtype=np.int16)
        self.lengths = np.full(total, -1, dtype=np.int64)
        self.has_image = np.zeros(total, dtype=bool)
        self.counts: Counter[ProblemKind] = Counter()
        self.examples: dict[ProblemKind, list[str]] = defaultdict(list)
        self.notes: Counter[str] = Counter()

    def run(self, progress: bool) -> None:
        total = len(self.records)
        with (
            ThreadPoolExecutor(max_workers=self.config.check_workers) as pool,
            tqdm(total=total, desc="Checking data", unit="sample", disable=None if progress else True) as bar,
        ):
            for start in range(0, total, _ENCODE_BATCH_SIZE):
                stop = min(total, start + _ENCODE_BATCH_SIZE)
                self._check_batch(range(start, stop), pool)
                bar.update(stop - start)

    def _check_batch(self, rows: range, pool: ThreadPoolExecutor) -> None:
        samples: list[LlavaSample] = []
        for row in rows:
            record = None
            try:
                record = self.records[row]
                samples.append(parse_sample(record, row))
            except SampleProblem as problem:
                self._record(row, read_sample_id(record), problem)

        image_jobs: list[tuple[LlavaSample, Path]] = []
        for sample, result in zip(samples, self.encoder.encode(samples)):
            if isinstance(result, SampleProblem):
                self._record(sample.row, sample.sample_id, result)
                continue
            if self._check_length(sample, result) and sample.image is not None:
                image_jobs.append((sample, self.root / sample.image))

        paths = [path for _, path in image_jobs]
        for (sample, _), outcome in zip(image_jobs, pool.map(self._check_image, paths)):
            if isinstance(outcome, ImageFileProblem):
                self._record(sample.row, sample.sample_id, outcome)
            elif outcome:
                self.notes[NOTE_TRUNCATED_ACCEPTED] += 1

    def _check_length(self, sample: LlavaSample, encoded: EncodedSample) -> bool:
        """Store the sample's length and return whether it is within the limit."""
        length = encoded.expanded_length(self.num_vision_tokens)
        self.lengths[sample.row] = length
        self.has_image[sample.row] = sample.has_image
        if sample.placeholder_added:
            self.notes[NOTE_PLACEHOLDER_ADDED] += 1

        limit = self.config.max_length
        if limit is None or length <= limit:
            return True

        detail = f" including {self.num_vision_tokens} vision tokens" if sample.has_image else ""
        problem = SampleProblem(
            ProblemKind.OVER_LENGTH,
            f"the sequence has {length} tokens{detail}, above max_length {limit}. Samples are removed, never truncated",
        )
        self._record(sample.row, sample.sample_id, problem)
        return False

    def _check_image(self, path: Path) -> bool | ImageFileProblem:
        try:
            return check_image_file(
                path,
                self.config.image_check,
                limits=image_limits(self.config),
                accept_truncated=self.config.accept_truncated_images,
            )
        except ImageFileProblem as problem:
            return problem

    def _record(self, row: int, sample_id: str | None, problem: SampleProblem) -> None:
        self.status[row] = _KIND_CODES[problem.kind]
        self.counts[problem.kind] += 1
        examples = self.examples[problem.kind]
        if len(examples) < self.config.report_examples:
            examples.append(problem.describe(describe_sample(sample_id, self.records.locate(row))))

    def result(self) -> CheckResult:
        kept_rows = np.flatnonzero(self.status == 0)
        kept_has_image = self.has_image[kept_rows]
        tokenized = self.lengths[self.lengths >= 0]

        report = DataReport(
            data_path=str(self.config.path),
            template=self.config.template,
            total_samples=len(self.records),
            kept_samples=len(kept_rows),
            image_samples=int(kept_has_image.sum()),
            text_samples=int(len(kept_rows) - kept_has_image.sum()),
            problem_counts=dict(self.counts),
            examples=dict(self.examples),
            removed_counts={},
            error_counts={},
            length_histogram=LengthHistogram.from_lengths(tokenized),
            max_length=self.config.max_length,
            num_vision_tokens=self.num_vision_tokens,
            on_error=self.config.on_error,
            notes=dict(self.notes),
            versions=tokenizer_versions(self.encoder.tokenizer),
        )
        apply_policy(report, self.config, any_image=bool(self.has_image.any()))
        return CheckResult(
            report=report,
            rows=kept_rows.astype(np.int64),
            lengths=self.lengths[kept_rows],
            has_image=kept_has_image,
        )


def tokenizer_versions(tokenizer: Any) -> dict[str, str]:
    """Return the tokenizer's name and the library versions that decide its token ids."""
    import tokenizers
    import transformers

    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return {"tokenizer": name, "tokenizers": tokenizers.__version__, "transformers": transformers.__version__}


def apply_policy(report: DataReport, config: DataConfig, any_image: bool) -> None:
    """Split the report's problems into errors and removed samples, and check the thresholds."""
    for kind, count in report.problem_counts.items():
        policy = config.over_length if kind is ProblemKind.OVER_LENGTH else config.on_error
        if policy == "error":
            report.error_counts[kind] = count
        else:
            report.removed_counts[kind] = count

    total = max(report.total_samples, 1)
    skipped_faults = sum(count for kind, count in report.removed_counts.items() if kind is not ProblemKind.OVER_LENGTH)
    if skipped_faults / total > config.max_skip_fraction:
        report.threshold_errors.append(
            f"{skipped_faults} of {report.total_samples} samples ({skipped_faults / total:.1%}) have problems, "
            f"above max_skip_fraction {config.max_skip_fraction:.1%}. Fix the data, or raise data.max_skip_fraction"
        )

    over_length = report.removed_counts.get(ProblemKind.OVER_LENGTH, 0)
    if over_length / total > config.max_over_length_fraction:
        report.threshold_errors.append(
            f"{over_length} of {report.total_samples} samples ({over_length / total:.1%}) are longer than max_length "
            f"{config.max_length}, above max_over_length_fraction {config.max_over_length_fraction:.1%}. "
            "Raise data.max_length, or raise data.max_over_length_fraction to train on the shorter samples only"
        )

    if any_image and config.max_length is not None and config.max_length <= report.num_vision_tokens:
        report.threshold_errors.append(
            f"max_length {config.max_length} leaves no room for text next to the {report.num_vision_tokens} "
            "vision tokens of an image. Raise data.max_length"
        )

    if report.kept_samples == 0 and not report.error_counts:
        if report.total_samples == 0:
            report.threshold_errors.append(f"the data file {report.data_path} contains no samples")
        else:
            report.threshold_errors.append("no sample is left for training after the check")
