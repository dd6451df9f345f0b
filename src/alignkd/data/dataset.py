"""The training dataset: checked LLaVA samples, tokenized and with images decoded on access.

`prepare_dataset` runs the pre-flight check (`alignkd.data.preflight`) and builds a
`LlavaDataset` over the samples that passed. A sample is re-read, re-tokenized and its
image decoded in `__getitem__`, so memory does not grow with the data set.

An image that passed a shallow pre-flight check can still fail to decode during training.
Such a sample follows the same policy as in the pre-flight check:

- on_error "error": a DataError naming the sample and the file stops the run.
- on_error "skip": the failure is counted and the next kept sample (in dataset order) is
  returned in its place, so the substitution is deterministic. The run stops with a
  DataError when the removed fraction goes above `max_skip_fraction`.

Each sample's outcome is kept in shared memory, so the counts that DataLoader workers
record reach the trainer, which reads them with `runtime_problem_counts()` in the main
process. A sample that failed once is skipped without decoding it again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from alignkd.data.collator import VLMDataCollator
from alignkd.data.config import DataConfig
from alignkd.data.conversation import describe_sample, parse_sample, read_sample_id
from alignkd.data.images import decode_image, preprocess_image
from alignkd.data.preflight import NOTE_TRUNCATED_ACCEPTED, check_data, image_limits, image_root
from alignkd.data.problems import ProblemKind, SampleProblem
from alignkd.data.records import LlavaRecords
from alignkd.data.report import DataReport
from alignkd.data.sampler import GroupedSampler
from alignkd.data.templates import get_template
from alignkd.data.tokenization import ConversationEncoder
from alignkd.errors import DataError

logger = logging.getLogger(__name__)

STUDENT = "student"
TEACHER = "teacher"

# Processor settings that only name the class and do not change the pixels.
_PROCESSOR_NAME_KEYS = ("image_processor_type", "processor_class", "_processor_class")

# Per-sample status codes kept in shared memory. 0 means "loaded without a problem, or not
# loaded yet", then come the problem kinds, then the accepted partial decodes.
_STATUS_NAMES = [kind.value for kind in ProblemKind] + [NOTE_TRUNCATED_ACCEPTED]
_STATUS_CODES = {name: code for code, name in enumerate(_STATUS_NAMES, start=1)}
_FAILURE_CODES = [_STATUS_CODES[kind.value] for kind in ProblemKind]

# Consecutive substitutes tried before giving up on a failing sample in skip mode.
_MAX_SUBSTITUTES = 16


class SampleStatus:
    """Outcome of loading each sample during training, shared across DataLoader workers.

    One int8 code per sample lives in shared memory. A worker only writes the code of the
    sample it loads, and every worker writes the same code for the same sample, so the
    writes never conflict and each sample counts once however often it is retried.
    """

    def __init__(self, size: int) -> None:
        self._codes = torch.zeros(size, dtype=torch.int8).share_memory_()

    def mark(self, position: int, name: str) -> int:
        """Record `name` for the sample at `position` and return how many samples have it."""
        code = _STATUS_CODES[name]
        self._codes[position] = code
        return int((self._codes == code).sum())

    def has_failed(self, position: int) -> bool:
        return int(self._codes[position]) in _FAILURE_CODES

    def failed_count(self) -> int:
        return int(sum((self._codes == code).sum() for code in _FAILURE_CODES))

    def totals(self) -> dict[str, int]:
        counts = torch.bincount(self._codes.long(), minlength=len(_STATUS_NAMES) + 1).tolist()
        return {name: counts[code] for name, code in _STATUS_CODES.items() if counts[code]}


class LlavaDataset(torch.utils.data.Dataset):
    """LLaVA samples that passed the pre-flight check. Build it with `prepare_dataset`.

    Each item is a dict:
        input_ids: LongTensor [seq], unexpanded, with one IMAGE_PLACEHOLDER_ID for an image.
        labels: LongTensor [seq], IGNORE_INDEX outside the supervised tokens.
        pixel_values: FloatTensor [3, H, W] from the student's image processor, or None.
        teacher_pixel_values: FloatTensor [3, H', W'] from the teacher's processor; present only
            when the teacher's processor differs from the student's.
        sample_index: the sample's row in the data file.

    Attributes:
        lengths: int64 array [samples]; expanded sequence lengths (vision tokens counted).
        has_image: bool array [samples].
        rows: int64 array [samples]; the record row of each sample.
        report: the pre-flight report.
    """

    def __init__(
        self,
        config: DataConfig,
        records: LlavaRecords,
        encoder: ConversationEncoder,
        image_processors: Mapping[str, Any],
        rows: np.ndarray,
        lengths: np.ndarray,
        has_image: np.ndarray,
        num_vision_tokens: int,
        report: DataReport,
    ):
        if STUDENT not in image_processors:
            raise ValueError(f"image_processors needs a {STUDENT!r} entry, got keys {sorted(image_processors)}")
        self.config = config
        self.records = records
        self.encoder = encoder
        self.rows = rows
        self.lengths = lengths
        self.has_image = has_image
        self.num_vision_tokens = num_vision_tokens
        self.report = report
        self.image_root = image_root(config)
        self.student_processor = image_processors[STUDENT]
        teacher = image_processors.get(TEACHER)
        self.teacher_processor = (
            teacher if teacher is not None and not same_processing(teacher, self.student_processor) else None
        )
        self.status = SampleStatus(len(rows))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def modality_lengths(self) -> list[int]:
        """Lengths signed by modality as LLaVA's samplers expect: positive with an image, negative without."""
        return [int(length) if image else -int(length) for length, image in zip(self.lengths, self.has_image)]

    def runtime_problem_counts(self) -> dict[str, int]:
        """Samples per problem kind met while loading during training, over all DataLoader workers.

        The key "truncated_image_accepted" counts truncated images accepted as partial decodes.
        """
        return self.status.totals()

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} is out of range for a dataset of {len(self)} samples")

        for attempt in range(min(_MAX_SUBSTITUTES, len(self))):
            position = (index + attempt) % len(self)
            if self.status.has_failed(position):
                continue
            try:
                return self._load(position)
            except SampleProblem as problem:
                self._handle_failure(position, problem)

        raise DataError(
            f"{_MAX_SUBSTITUTES} consecutive samples from position {index} failed to load; "
            "the data or the image folder is probably not the one that was checked"
        )

    def _handle_failure(self, position: int, problem: SampleProblem) -> None:
        row = int(self.rows[position])
        name = describe_sample(self._sample_id(row), self.records.locate(row))
        total = self.status.mark(position, problem.kind.value)

        if self.config.on_error == "error":
            if problem.kind.is_image_file_problem:
                hint = "or data.image_check: decode to find such images before training"
            else:
                hint = "or restart the run if the data file changed after the check"
            raise DataError(
                f"{problem.describe(name)}. Set data.on_error: skip to skip such samples with a count, {hint}"
            )

        skipped = self.report.removed_samples - self.report.removed_counts.get(ProblemKind.OVER_LENGTH, 0)
        skipped += self.status.failed_count()
        fraction = skipped / max(self.report.total_samples, 1)
        if fraction > self.config.max_skip_fraction:
            raise DataError(
                f"{skipped} samples were skipped in all ({fraction:.1%}), above max_skip_fraction "
                f"{self.config.max_skip_fraction:.1%}; the last one: {problem.describe(name)}"
            )

        # Log the first failure of each kind and then every power of two, to keep logs short.
        if total & (total - 1) == 0:
            logger.warning(
                "Skipped %s (%d samples with %s so far during training); using the next sample instead",
                problem.describe(name),
                total,
                problem.kind.value,
            )

    def _sample_id(self, row: int) -> str | None:
        try:
            return read_sample_id(self.records[row])
        except SampleProblem:
            return None

    def _load(self, position: int) -> dict[str, Any]:
        row = int(self.rows[position])
        sample = parse_sample(self.records[row], row)
        encoded = self.encoder.encode_one(sample)

        expected_length = int(self.lengths[position])
        if encoded.expanded_length(self.num_vision_tokens) != expected_length:
            raise DataError(
                f"{describe_sample(sample.sample_id, self.records.locate(row))} now has "
                f"{encoded.expanded_length(self.num_vision_tokens)} tokens, but the pre-flight check "
                f"measured {expected_length}. The data file or tokenizer changed after the check; restart the run"
            )

        item: dict[str, Any] = {
            "input_ids": torch.tensor(encoded.input_ids, dtype=torch.long),
            "labels": torch.tensor(encoded.labels, dtype=torch.long),
            "pixel_values": None,
            "sample_index": row,
        }
        if sample.image is not None:
            image = self._open_image(self.image_root / sample.image, position)
            item["pixel_values"] = preprocess_image(image, self.student_processor, self.config.image_aspect_ratio)
            if self.teacher_processor is not None:
                item["teacher_pixel_values"] = preprocess_image(
                    image, self.teacher_processor, self.config.image_aspect_ratio
                )
        return item

    def _open_image(self, path: Any, position: int) -> Image.Image:
        image, partial = decode_image(
            path,
            background=tuple(self.config.alpha_background),
            limits=image_limits(self.config),
            accept_truncated=self.config.accept_truncated_images,
        )
        if partial:
            self.status.mark(position, NOTE_TRUNCATED_ACCEPTED)
        return image

    def collator(self, pad_to_multiple_of: int | None = None) -> VLMDataCollator:
        """Build the collator for this dataset's tokenizer and image processors."""
        pad_token_id = self.encoder.spec.pad_token_id
        if pad_token_id is None:
            raise DataError(
                "the tokenizer has no pad token, so batches cannot be padded. Set tokenizer.pad_token "
                "(for example to tokenizer.eos_token: padding is masked by the attention mask)"
            )
        teacher_shape = None
        if self.teacher_processor is not None:
            teacher_shape = processed_image_shape(self.teacher_processor, self.config.image_aspect_ratio)
        return VLMDataCollator(
            pad_token_id=pad_token_id,
            image_shape=processed_image_shape(self.student_processor, self.config.image_aspect_ratio),
            teacher_image_shape=teacher_shape,
            pad_to_multiple_of=pad_to_multiple_of,
        )

    def sampler(self, batch_size: int, world_size: int = 1, seed: int = 0) -> GroupedSampler | None:
        """Build the grouped sampler that `config.group_by` selects, or None for plain shuffling."""
        if self.config.group_by == "none":
            return None
        return GroupedSampler(
            lengths=self.lengths,
            has_image=self.has_image,
            batch_size=batch_size,
            world_size=world_size,
            seed=seed,
            group_by=self.config.group_by,
        )


def same_processing(first: Any, second: Any) -> bool:
    """Return whether two image processors turn an image into the same pixels (same class and settings)."""
    if type(first) is not type(second):
        return False

    def settings(processor: Any) -> dict[str, Any]:
        values = processor.to_dict()
        for key in _PROCESSOR_NAME_KEYS:
            values.pop(key, None)
        return values

    return settings(first) == settings(second)


def processed_image_shape(image_processor: Any, aspect_ratio: str) -> tuple[int, int, int]:
    """Return the [channels, height, width] that `image_processor` produces, by processing a tiny image."""
    probe = Image.new("RGB", (2, 1))
    return tuple(preprocess_image(probe, image_processor, aspect_ratio).shape)  # type: ignore[return-value]


def prepare_dataset(
    config: DataConfig,
    tokenizer: Any,
    image_processors: Mapping[str, Any],
    num_vision_tokens: int,
    progress: bool = True,
) -> tuple[LlavaDataset, DataReport]:
    """Check the data and build the training dataset from the samples that passed.

    Args:
        config: the data config.
        tokenizer: the fast tokenizer of the student (and teacher: they must share it).
        image_processors: "student" and optionally "teacher" image processors. The teacher's
            pixels are produced separately only when its processor differs from the student's.
        num_vision_tokens: vision tokens per image, the largest among the models in use.
        progress: show a progress bar during the check.

    Returns:
        The dataset and the pre-flight report. The report is also logged.

    Raises:
        DataError: in error mode, when any sample has a problem. The message lists the first
            offending samples of each kind. In skip mode, when the removed fraction is above
            its threshold. In both modes, when no sample is left.
    """
    # NOTE: every process runs the whole check, so data-parallel ranks repeat the same work.
    # Running it on rank 0 and sharing the kept rows would need a collective from the trainer.
    config.validate()
    if STUDENT not in image_processors:
        raise ValueError(f"image_processors needs a {STUDENT!r} entry, got keys {sorted(image_processors)}")

    records = LlavaRecords(config.path)
    result = check_data(config, tokenizer, num_vision_tokens, records=records, progress=progress)
    report = result.report
    logger.info("%s", report.format())

    if report.has_errors:
        raise DataError(
            f"the data check of {config.path} failed: {report.summary()}. Fix or remove these samples, or set "
            "data.on_error: skip to remove them with a count. Run `alignkd data check` for the full report"
        )
    for kind, count in report.removed_counts.items():
        logger.warning("Removed %d samples: %s", count, kind.value)

    encoder = ConversationEncoder(tokenizer, get_template(config.template, config.system_prompt))
    dataset = LlavaDataset(
        config=config,
        records=records,
        encoder=encoder,
        image_processors=image_processors,
        rows=result.rows,
        lengths=result.lengths,
        has_image=result.has_image,
        num_vision_tokens=num_vision_tokens,
        report=report,
    )
    return dataset, report
