"""`alignkd cache-teacher`: run the teacher once over each stage's data and store what the objective reads.

For each stage of the distill config, the writer builds the stage's dataset exactly as training
does (same data config and pre-flight check, the teacher's tokenizer and image processor). It
selects the samples to cache, sorts them by length (stably) and cuts them into batches. It runs
the frozen teacher on each batch and keeps, per sample, the outputs that the configured
objective reads (see `alignkd.cache.format` for the tensors).

Resuming. Batches are fixed by the selection and the batch size, and a shard is closed after
the first batch that brings its tensors to the shard size, so shard boundaries do not depend on
when the command runs. Shards are written under a temporary name and renamed when complete, and
the manifest is rewritten after each one. Running the command again on the same folder checks
the listed shards, removes files that no manifest lists (what a killed run left behind), and
writes only the batches that no valid shard holds. The result is the same cache as one
uninterrupted run, file for file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from alignkd.cache.defaults import DEFAULT_SHARD_MEGABYTES, DEFAULT_TOP_K
from alignkd.cache.entries import (
    SampleEntry,
    entry_tensors,
    split_teacher_output,
    tensor_bytes_by_kind,
)
from alignkd.cache.fingerprint import (
    LOGIT_COMPONENTS,
    RUN_COMPONENTS,
    TEACHER_COMPONENTS,
    check_components,
    needed_outputs,
    run_components,
    teacher_components,
)
from alignkd.cache.format import (
    FORMAT_VERSION,
    INDEX_SUFFIX,
    SHARD_SUFFIX,
    TEMPORARY_SUFFIX,
    CacheMismatchError,
    CorruptShardError,
    ShardIndex,
    ShardRecord,
    StageManifest,
    TeacherInfo,
    VerifyMode,
    WriteSettings,
    check_shard_file,
    index_bytes,
    read_index,
    read_manifest,
    sha256_file,
    shard_stem,
    token_id_dtype,
    write_bytes_atomic,
    write_manifest,
)
from alignkd.cache.keys import batch_sample_hashes, sample_keys
from alignkd.config import ConfigError
from alignkd.data.dataset import LlavaDataset, prepare_dataset
from alignkd.losses.objective import ResolvedObjective
from alignkd.models.loading import LoadedVLM, get_vlm_adapter, load_vlm
from alignkd.training.config import DistillConfig, StageConfig
from alignkd.training.teacher import LiveTeacher

logger = logging.getLogger(__name__)

# Below this mean teacher mass inside the top-k ids, the top-k loss is far from the full one.
_LOW_TOP_K_MASS = 0.9

_MEGABYTE = 2**20
# One key only: safetensors writes metadata keys in no fixed order, and a resumed run must
# produce byte-identical shards. The format version is in the manifest.
_SHARD_METADATA = {"format": "pt"}
_BATCH_TENSOR_KEYS = ("input_ids", "attention_mask", "labels", "image_mask", "pixel_values", "teacher_pixel_values")


@dataclass
class CacheOptions:
    """Options of `alignkd cache-teacher` beyond the distill config."""

    out: Path
    """The cache folder; one sub-folder per stage."""

    top_k: int = DEFAULT_TOP_K
    """Tokens kept per logit row (clipped to the vocabulary size)."""

    min_length: int = 0
    """Cache only samples whose expanded length (teacher's vision tokens) is at least this; 0: all."""

    batch_size: int | None = None
    """Samples per teacher forward; None: the stage's per_device_batch_size."""

    shard_megabytes: float = DEFAULT_SHARD_MEGABYTES
    """Shard size in MiB (see `WriteSettings.shard_megabytes`)."""

    verify: VerifyMode = "sha256"
    """Check of the shards of an existing folder before the run continues: "sha256" or "size"."""

    stages: list[str] | None = None
    """Stages to cache; None: every stage the config runs."""

    def validate(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, got {self.top_k}")
        if self.min_length < 0:
            raise ConfigError(f"--min-length must be 0 or more, got {self.min_length}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.shard_megabytes > 0:
            raise ConfigError(f"--shard-size must be a positive number of MiB, got {self.shard_megabytes}")


@dataclass
class StageSummary:
    """Result of `write_teacher_cache` for one stage."""

    stage: str
    folder: Path
    manifest: StageManifest
    written_shards: int


@dataclass
class _ShardBuffer:
    """The stored tensors and index columns of the shard being filled."""

    first_batch: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    index: ShardIndex = field(default_factory=lambda: ShardIndex([], [], [], [], [], []))
    tensor_bytes: int = 0
    top_k_mass_sum: float = 0.0
    top_k_mass_min: float = 1.0

    def add(self, entry: SampleEntry, id_dtype: torch.dtype) -> None:
        """Convert `entry` to its stored tensors at the next position; the entry itself is not kept."""
        tensors = entry_tensors(entry, len(self.index.keys), id_dtype)
        self.tensors.update(tensors)
        self.tensor_bytes += sum(tensor_bytes_by_kind(tensors).values())

        self.index.keys.append(entry.key)
        self.index.token_hashes.append(entry.token_hash)
        self.index.logit_rows.append(entry.logit_rows)
        self.index.attention_rows.append(entry.attention_rows)
        self.index.has_image.append(entry.has_image)
        self.index.sequence_tokens.append(entry.sequence_tokens)

        if entry.logit_rows:
            mass = -torch.expm1(entry.top_k.tail_log_prob.detach().double())
            self.top_k_mass_sum += float(mass.sum())
            self.top_k_mass_min = min(self.top_k_mass_min, float(mass.min()))


def teacher_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    # `distill` calls a live teacher inside the trainer's autocast; caching under the same
    # autocast gives the same values.
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def write_teacher_cache(config: DistillConfig, options: CacheOptions) -> list[StageSummary]:
    """Run the teacher of `config` over the data of its stages and write (or finish) the cache.

    Raises:
        ConfigError: the config has no teacher, its loss uses no teacher output, or an option is invalid.
        CacheMismatchError: `options.out` contains a cache made with other settings.
    """
    from alignkd.training.run import teacher_dtype  # noqa: PLC0415 - avoids a cycle through training

    options.validate()
    settings = config.loss.resolved()
    outputs = needed_outputs(settings)
    if not outputs:
        raise ConfigError(f"the '{config.loss.preset}' loss preset reads no teacher output, so there is nothing to cache")
    if config.teacher is None:
        raise ConfigError("cache-teacher runs the teacher: set teacher.path in the config")

    stages = config.stages()
    if options.stages is not None:
        unknown = sorted(set(options.stages) - {name for name, _ in stages})
        if unknown:
            raise ConfigError(
                f"--stage {', '.join(unknown)}: the config runs only {', '.join(name for name, _ in stages)} "
                f"(stage: {config.stage})"
            )
        stages = [(name, stage) for name, stage in stages if name in options.stages]

    dtype = teacher_dtype(config.teacher, config.precision)
    device = teacher_device()
    loaded = load_vlm(config.teacher.path, dtype=dtype, device=device)
    adapter = get_vlm_adapter(loaded.model)
    logger.info("Hashing the teacher folder %s to fingerprint the cache", config.teacher.path)
    teacher = teacher_components(config.teacher.path, dtype, adapter.num_vision_tokens)

    summaries = []
    for name, stage in stages:
        writer = _StageWriter(config, options, settings, outputs, name, stage, loaded, teacher, device)
        summaries.append(writer.run())
    return summaries


class _StageWriter:
    """Writes (or finishes) the cache of one stage."""

    def __init__(
        self,
        config: DistillConfig,
        options: CacheOptions,
        settings: ResolvedObjective,
        outputs: list[str],
        name: str,
        stage: StageConfig,
        loaded: LoadedVLM,
        teacher: dict[str, str],
        device: torch.device,
    ):
        self.config = config
        self.options = options
        self.settings = settings
        self.outputs = outputs
        self.name = name
        self.stage = stage
        self.loaded = loaded
        self.live = LiveTeacher(loaded.model)
        self.adapter = get_vlm_adapter(loaded.model)
        self.device = device
        self.folder = Path(options.out) / name
        self.vocab_size = len(loaded.tokenizer)
        self.id_dtype = token_id_dtype(self.vocab_size)
        self.fingerprint = {**run_components(stage.data, loaded.tokenizer, settings), **teacher}
        self.shard_bytes = options.shard_megabytes * _MEGABYTE
        self.written_shards = 0

    def run(self) -> StageSummary:
        self.folder.mkdir(parents=True, exist_ok=True)
        dataset, _ = prepare_dataset(
            self.stage.data, self.loaded.tokenizer, {"student": self.loaded.image_processor}, self.adapter.num_vision_tokens
        )
        keys = sample_keys(dataset.records)
        selected = np.flatnonzero(dataset.lengths >= self.options.min_length)
        # Batches of similar lengths waste less of the teacher's compute on padding. The sort is
        # stable, so the order, and with it the shards, is the same on every run.
        selected = selected[np.argsort(dataset.lengths[selected], kind="stable")]
        batch_size = self.options.batch_size or self.stage.optimization.per_device_batch_size
        batches = [selected[start : start + batch_size].tolist() for start in range(0, len(selected), batch_size)]
        if len(selected) < len(dataset):
            logger.info(
                "Stage %s: caching the %d of %d samples with at least %d tokens; the others are computed live in training",
                self.name,
                len(selected),
                len(dataset),
                self.options.min_length,
            )

        write_settings = WriteSettings(
            top_k=min(self.options.top_k, self.vocab_size),
            min_length=self.options.min_length,
            batch_size=batch_size,
            shard_megabytes=float(self.options.shard_megabytes),
            outputs=list(self.outputs),
            data_file_sha256=sha256_file(Path(self.stage.data.path)),
        )
        manifest = self._open_manifest(write_settings, len(selected), len(batches))
        self._remove_unlisted_files(manifest)

        gaps = _missing_ranges(manifest, len(batches))
        done = len(selected) - sum(len(batch) for start, end in gaps for batch in batches[start:end])
        with tqdm(total=len(selected), initial=done, unit="sample", desc=f"caching {self.name}") as progress:
            for start, end in gaps:
                self._write_range(manifest, dataset, keys, batches, start, end, progress)

        manifest.complete = manifest.covered_batches() == len(batches)
        write_manifest(self.folder, manifest)
        self._log_summary(manifest)
        return StageSummary(self.name, self.folder, manifest, self.written_shards)

    # ---- Manifest and resume ------------------------------------------------------------

    def _open_manifest(self, write_settings: WriteSettings, selected: int, total_batches: int) -> StageManifest:
        teacher_info = TeacherInfo(
            heads=self.adapter.num_attention_heads,
            width=self.adapter.hidden_size,
            num_vision_tokens=self.adapter.num_vision_tokens,
            vocab_size=self.vocab_size,
            path=str(self.config.teacher.path),
        )
        existing = read_manifest(self.folder)
        if existing is None:
            manifest = StageManifest(
                format_version=FORMAT_VERSION,
                stage=self.name,
                fingerprint=self.fingerprint,
                write_settings=write_settings,
                teacher=teacher_info,
                selected_samples=selected,
                total_batches=total_batches,
                versions=_library_versions(),
            )
            write_manifest(self.folder, manifest)
            return manifest

        advice = f"Use another --out folder, or delete {self.folder} to write it again"
        check_components(
            existing.fingerprint,
            self.fingerprint,
            RUN_COMPONENTS + LOGIT_COMPONENTS + TEACHER_COMPONENTS,
            cache_dir=self.folder,
            advice=advice,
        )
        changed = [
            f"{name}: {getattr(existing.write_settings, name)!r} in the cache, {getattr(write_settings, name)!r} now"
            for name in ("top_k", "min_length", "batch_size", "shard_megabytes", "outputs", "data_file_sha256")
            if getattr(existing.write_settings, name) != getattr(write_settings, name)
        ]
        if existing.selected_samples != selected:
            changed.append(f"selected samples: {existing.selected_samples} in the cache, {selected} now")
        if changed:
            raise CacheMismatchError(
                f"{self.folder} contains a teacher cache written with other options or data: {'; '.join(changed)}. {advice}"
            )

        valid = []
        for record in existing.shards:
            try:
                check_shard_file(self.folder / record.file, record, self.options.verify)
                read_index(self.folder / record.index_file, record)
            except CorruptShardError as error:
                logger.warning("%s; its batches %d to %d are written again", error, record.first_batch, record.end_batch - 1)
                continue
            valid.append(record)
        existing.shards = valid
        covered = existing.covered_batches()
        if covered:
            logger.info("Stage %s: resuming; %d of %d batches are in complete shards", self.name, covered, total_batches)
        return existing

    def _remove_unlisted_files(self, manifest: StageManifest) -> None:
        listed = {name for record in manifest.shards for name in (record.file, record.index_file)}
        for path in sorted(self.folder.iterdir()):
            is_shard_file = path.name.startswith("shard-") and path.name.endswith((SHARD_SUFFIX, INDEX_SUFFIX, TEMPORARY_SUFFIX))
            if (is_shard_file and path.name not in listed) or path.name.endswith(TEMPORARY_SUFFIX):
                logger.info("Removing %s, left by an interrupted or damaged run", path)
                path.unlink()

    # ---- Writing ----------------------------------------------------------------------

    def _batches(self, dataset: LlavaDataset, batches: list[list[int]]) -> Iterator[dict[str, Any]]:
        loader = DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=dataset.collator(),
            num_workers=self.config.dataloader_num_workers,
        )
        yield from loader

    def _write_range(
        self,
        manifest: StageManifest,
        dataset: LlavaDataset,
        keys: list[str],
        batches: list[list[int]],
        start: int,
        end: int,
        progress: tqdm,
    ) -> None:
        buffer = _ShardBuffer(first_batch=start)
        for batch_number, batch in enumerate(self._batches(dataset, batches[start:end]), start=start):
            # In on_error "skip" mode, a sample that fails to load is replaced by the next one. The
            # replacement is cached at its own place, never under another sample's key.
            expected_rows = dataset.rows[batches[batch_number]]
            rows = batch["sample_index"].tolist()
            kept = [row == int(expected) for row, expected in zip(rows, expected_rows)]

            with torch.no_grad(), _autocast(self.config.precision, self.device):
                output = self.live({name: _to_device(batch.get(name), self.device) for name in _BATCH_TENSOR_KEYS}, self.settings)
            entries = split_teacher_output(
                output,
                keys=[keys[row] for row in rows],
                token_hashes=batch_sample_hashes(batch),
                outputs=self.outputs,
                top_k=manifest.write_settings.top_k,
                temperature=self.settings.temperature,
                vocab_size=self.vocab_size,
                chunk_size=self.settings.chunk_size,
            )
            for entry, keep in zip(entries, kept):
                if keep:
                    buffer.add(entry, self.id_dtype)
            progress.update(len(rows))

            if buffer.tensor_bytes >= self.shard_bytes or batch_number + 1 == end:
                self._flush(manifest, buffer, end_batch=batch_number + 1)
                buffer = _ShardBuffer(first_batch=batch_number + 1)

    def _flush(self, manifest: StageManifest, buffer: _ShardBuffer, end_batch: int) -> None:
        data = safetensors.torch.save(buffer.tensors, metadata=_SHARD_METADATA)
        index_data = index_bytes(buffer.index)
        stem = shard_stem(buffer.first_batch)

        # The manifest is written last: until it lists the shard, a resumed run rewrites it.
        write_bytes_atomic(self.folder / (stem + INDEX_SUFFIX), index_data)
        write_bytes_atomic(self.folder / (stem + SHARD_SUFFIX), data)
        record = ShardRecord(
            file=stem + SHARD_SUFFIX,
            index_file=stem + INDEX_SUFFIX,
            first_batch=buffer.first_batch,
            end_batch=end_batch,
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            index_bytes=len(index_data),
            index_sha256=hashlib.sha256(index_data).hexdigest(),
            samples=len(buffer.index.keys),
            logit_rows=sum(buffer.index.logit_rows),
            sequence_tokens=sum(buffer.index.sequence_tokens),
            tensor_bytes=tensor_bytes_by_kind(buffer.tensors),
            top_k_mass_sum=buffer.top_k_mass_sum,
            top_k_mass_min=buffer.top_k_mass_min,
        )
        manifest.shards = sorted([*manifest.shards, record], key=lambda shard: shard.first_batch)
        write_manifest(self.folder, manifest)
        self.written_shards += 1

    def _log_summary(self, manifest: StageManifest) -> None:
        summary = manifest.summary
        logger.info(
            "Stage %s: %d samples in %d shards (%.1f MiB); logits take %.1f bytes per row, %.2f%% of dense fp16 logits; "
            "the teacher's top-%d tokens hold %.3f of its probability on average",
            self.name,
            int(summary["samples"]),
            len(manifest.shards),
            summary["file_bytes"] / _MEGABYTE,
            summary["logit_bytes_per_row"],
            100 * summary["logits_fraction_of_dense"],
            manifest.write_settings.top_k,
            summary["top_k_mass_mean"],
        )
        if summary["logit_rows"] and summary["top_k_mass_mean"] < _LOW_TOP_K_MASS:
            logger.warning(
                "Stage %s: the teacher's top-%d tokens hold only %.3f of its probability on average, so the top-k logit "
                "loss is well below the full-vocabulary one; a larger --top-k brings them closer",
                self.name,
                manifest.write_settings.top_k,
                summary["top_k_mass_mean"],
            )


def _missing_ranges(manifest: StageManifest, total_batches: int) -> list[tuple[int, int]]:
    """Return the ranges [start, end) of batches that no listed shard contains, in order."""
    ranges = []
    next_batch = 0
    for record in sorted(manifest.shards, key=lambda shard: shard.first_batch):
        if record.first_batch > next_batch:
            ranges.append((next_batch, record.first_batch))
        next_batch = max(next_batch, record.end_batch)
    if next_batch < total_batches:
        ranges.append((next_batch, total_batches))
    return ranges


def _to_device(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _library_versions() -> dict[str, str]:
    import safetensors
    import tokenizers
    import transformers

    import alignkd

    return {
        "alignkd": getattr(alignkd, "__version__", "unknown"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
    }

