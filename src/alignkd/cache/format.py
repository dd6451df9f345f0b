"""The on-disk format of a teacher cache: folder layout, manifest, shard index and file helpers.

A cache folder contains one sub-folder per training stage:

    DIR/<stage>/manifest.json                       what the stage contains (see `StageManifest`)
    DIR/<stage>/shard-b0000000.safetensors          the tensors of the samples of some batches
    DIR/<stage>/shard-b0000000.index.json           the sample keys of that shard (see `ShardIndex`)

A shard is named after its first batch, so an interrupted run that is resumed names and fills
its shards exactly as an uninterrupted run does. Files are written under a temporary name and
renamed once complete. The manifest is rewritten after each shard, and it lists only complete
shards, with their byte size and SHA-256.

Tensors of the sample at position `i` of a shard are named `"{i}/{field}"` with these fields:

    top_k_log_probs        float32 [rows, k]         teacher log-probabilities at the temperature
    top_k_ids              uint16 or int32 [rows, k] their token ids
    tail_log_prob          float32 [rows]            log of the mass outside the top-k ids
    targets                int32 [rows]              next-token id of each row (alignment check)
    text_vision_attention  float16 [heads, text, vision]  layer-0 text-after-image x vision block
    vision_tokens          float16 [vision, hidden]  the projector's output for the sample's image

A field is absent when the run stores no such output, or when the sample has none (a text-only
sample has no vision tokens, and no attention block without text after its image).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from alignkd.config import ConfigError, from_mapping
from alignkd.errors import AlignKDError

VerifyMode = Literal["sha256", "size"]
"""The check of a shard when it is first opened: its size and SHA-256 ("sha256", which reads the
whole file once), or its size only ("size", which catches truncation but not changed bytes)."""

FORMAT_VERSION = 1
"""Version of this layout; a cache of another version is rejected with an error."""

MANIFEST_FILE = "manifest.json"
TEMPORARY_SUFFIX = ".tmp"
SHARD_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".index.json"

# Output kinds a cache can store, and the tensor fields of each.
LOGITS = "logits"
ATTENTION = "attention"
VISION_TOKENS = "vision_tokens"
OUTPUT_KINDS = (LOGITS, ATTENTION, VISION_TOKENS)

LOG_PROBS_FIELD = "top_k_log_probs"
TOKEN_IDS_FIELD = "top_k_ids"
TAIL_FIELD = "tail_log_prob"
TARGETS_FIELD = "targets"
ATTENTION_FIELD = "text_vision_attention"
VISION_TOKENS_FIELD = "vision_tokens"
FIELD_KINDS = {
    LOG_PROBS_FIELD: LOGITS,
    TOKEN_IDS_FIELD: LOGITS,
    TAIL_FIELD: LOGITS,
    TARGETS_FIELD: LOGITS,
    ATTENTION_FIELD: ATTENTION,
    VISION_TOKENS_FIELD: VISION_TOKENS,
}

# Largest vocabulary whose ids fit an unsigned 16-bit integer.
_UINT16_VOCABULARY = 2**16

_HASH_BLOCK_BYTES = 8 * 2**20


class CacheError(AlignKDError):
    """A teacher cache is missing, incomplete, of another format, or lacks what the run needs."""


class CacheMismatchError(CacheError):
    """A teacher cache was made with other settings, data, tokenizer or teacher than this run's."""


class CorruptShardError(CacheError):
    """A shard or index file of a teacher cache is truncated or its bytes changed."""


def tensor_name(position: int, field_name: str) -> str:
    """Name of the tensor `field_name` of the sample at `position` in its shard."""
    return f"{position}/{field_name}"


def shard_stem(first_batch: int) -> str:
    """File name stem of the shard that starts at batch `first_batch`."""
    return f"shard-b{first_batch:07d}"


def token_id_dtype(vocab_size: int) -> torch.dtype:
    """Return the narrowest integer dtype that can store every token id of a `vocab_size` vocabulary."""
    return torch.uint16 if vocab_size <= _UINT16_VOCABULARY else torch.int32


@dataclass
class TeacherInfo:
    """Sizes of the teacher that wrote the cache; the objective sizes its adapters from them."""

    heads: int
    """Query heads of the teacher's first decoder layer (rows of the attention block)."""

    width: int
    """Hidden size of the teacher's language model (width of its vision tokens)."""

    num_vision_tokens: int
    """Vision tokens per image after the teacher's projector."""

    vocab_size: int
    """Vocabulary entries of the cached distributions: the tokenizer length."""

    path: str
    """The teacher folder at write time; for information only."""


@dataclass
class WriteSettings:
    """Options of `alignkd cache-teacher` that decide what the cache contains and how it is cut.

    Resuming into an existing folder requires the same values.
    """

    top_k: int
    """Tokens kept per logit row, clipped to the vocabulary size."""

    min_length: int
    """Only samples whose expanded length (with the teacher's vision tokens) is at least this are
    cached; 0 caches every sample."""

    batch_size: int
    """Samples per teacher forward; it fixes the batches, and with them the shard boundaries."""

    shard_megabytes: float
    """A shard is closed after the first batch that brings its tensors to this size (MiB)."""

    outputs: list[str]
    """Stored output kinds: "logits", "attention", "vision_tokens"."""

    data_file_sha256: str
    """SHA-256 of the data file, so that a resumed run continues over the same samples."""


@dataclass
class ShardRecord:
    """One complete shard as listed in the manifest."""

    file: str
    """Shard file name, relative to the stage folder."""

    index_file: str
    """Index file name (the keys of the shard's samples), relative to the stage folder."""

    first_batch: int
    """First batch held, counting the batches of the selected samples sorted by length."""

    end_batch: int
    """One past the last batch held."""

    bytes: int
    """Size of the shard file."""

    sha256: str
    """SHA-256 of the shard file."""

    index_bytes: int
    """Size of the index file."""

    index_sha256: str
    """SHA-256 of the index file."""

    samples: int
    """Samples stored (a sample replaced by another during loading is not stored)."""

    logit_rows: int
    """Logit rows stored (tokens whose distribution is kept)."""

    sequence_tokens: int
    """Real tokens of the stored samples after image expansion with the teacher's vision tokens."""

    tensor_bytes: dict[str, int]
    """Bytes of the stored tensors per output kind (without the file header)."""

    top_k_mass_sum: float
    """Sum over the shard's logit rows of the teacher mass inside the top-k ids."""

    top_k_mass_min: float
    """Smallest teacher mass inside the top-k ids over the shard's logit rows (1.0 without rows)."""


@dataclass
class StageManifest:
    """Everything about the cache of one training stage (`DIR/<stage>/manifest.json`)."""

    format_version: int
    """Layout version; see `FORMAT_VERSION`."""

    stage: str
    """The training stage (pretrain or finetune)."""

    fingerprint: dict[str, str]
    """Named components of the run that produced the values (see `alignkd.cache.fingerprint`)."""

    write_settings: WriteSettings
    """Options of the writing command."""

    teacher: TeacherInfo
    """Sizes of the teacher."""

    selected_samples: int
    """Samples selected for caching (all kept samples, or those at least min_length long)."""

    total_batches: int
    """Batches the selected samples form."""

    shards: list[ShardRecord] = field(default_factory=list)
    """Complete shards, in batch order."""

    complete: bool = False
    """Every batch is in a listed shard."""

    versions: dict[str, str] = field(default_factory=dict)
    """Library versions at write time, for information."""

    summary: dict[str, float] = field(default_factory=dict)
    """Totals and ratios over the listed shards (see `summarize`)."""

    @property
    def is_partial(self) -> bool:
        """Only samples of at least `min_length` tokens are cached; the others are computed live."""
        return self.write_settings.min_length > 0

    def covered_batches(self) -> int:
        return sum(shard.end_batch - shard.first_batch for shard in self.shards)


def summarize(manifest: StageManifest) -> dict[str, float]:
    """Totals over the listed shards, and bytes per token against dense fp16 logits.

    Keys: samples, logit_rows, sequence_tokens, file_bytes, logits_bytes, attention_bytes,
    vision_tokens_bytes, logit_bytes_per_row, dense_fp16_bytes_per_row, logits_fraction_of_dense,
    file_bytes_per_sequence_token, top_k_mass_mean, top_k_mass_min.
    """
    shards = manifest.shards
    rows = sum(shard.logit_rows for shard in shards)
    sequence_tokens = sum(shard.sequence_tokens for shard in shards)
    file_bytes = sum(shard.bytes for shard in shards)
    kind_bytes = {kind: sum(shard.tensor_bytes.get(kind, 0) for shard in shards) for kind in OUTPUT_KINDS}
    dense_row = 2 * manifest.teacher.vocab_size
    per_row = kind_bytes[LOGITS] / rows if rows else 0.0
    return {
        "samples": float(sum(shard.samples for shard in shards)),
        "logit_rows": float(rows),
        "sequence_tokens": float(sequence_tokens),
        "file_bytes": float(file_bytes),
        **{f"{kind}_bytes": float(value) for kind, value in kind_bytes.items()},
        "logit_bytes_per_row": per_row,
        "dense_fp16_bytes_per_row": float(dense_row),
        "logits_fraction_of_dense": per_row / dense_row,
        "file_bytes_per_sequence_token": file_bytes / sequence_tokens if sequence_tokens else 0.0,
        "top_k_mass_mean": sum(shard.top_k_mass_sum for shard in shards) / rows if rows else 1.0,
        "top_k_mass_min": min((shard.top_k_mass_min for shard in shards), default=1.0),
    }


@dataclass
class ShardIndex:
    """The samples of one shard, position by position (`shard-*.index.json`)."""

    keys: list[str]
    """Sample key of each position (see `alignkd.cache.keys`)."""

    token_hashes: list[str]
    """Hash of each sample's token ids, labels and image, to detect a sample that changed under its key."""

    logit_rows: list[int]
    """Logit rows of each sample."""

    attention_rows: list[int]
    """Rows of each sample's attention block (its text after the image)."""

    has_image: list[bool]
    """Whether each sample has an image."""

    sequence_tokens: list[int]
    """Real tokens of each sample after image expansion with the teacher's vision tokens."""

    def validate(self) -> None:
        columns = (self.token_hashes, self.logit_rows, self.attention_rows, self.has_image, self.sequence_tokens)
        if any(len(column) != len(self.keys) for column in columns):
            raise ConfigError("the columns of a shard index must all have one entry per sample")


def manifest_path(stage_dir: Path) -> Path:
    return stage_dir / MANIFEST_FILE


def read_manifest(stage_dir: Path) -> StageManifest | None:
    """Read `stage_dir`'s manifest, or return None when the folder has none.

    Raises:
        CacheError: the manifest is not valid JSON, has unknown or missing keys, or has another
            format version.
    """
    path = manifest_path(stage_dir)
    if not path.is_file():
        return None
    data = _read_json(path)
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise CacheError(
            f"{path} has cache format version {version!r}, but this alignkd reads version {FORMAT_VERSION}; "
            "write the cache again with this version of `alignkd cache-teacher`"
        )
    try:
        return from_mapping(StageManifest, data)
    except ConfigError as error:
        raise CacheError(f"{path} is not a valid teacher cache manifest: {error}") from None


def write_manifest(stage_dir: Path, manifest: StageManifest) -> None:
    """Write the manifest atomically, with its summary refreshed."""
    manifest.summary = summarize(manifest)
    write_bytes_atomic(manifest_path(stage_dir), _json_bytes(asdict(manifest)))


def read_index(path: Path, record: ShardRecord) -> ShardIndex:
    """Read and check the index of one shard against its manifest record.

    Raises:
        CorruptShardError: the file is missing, truncated or changed.
    """
    if not path.is_file():
        raise CorruptShardError(
            f"teacher cache index {path} is missing. {repair_hint(path.parent)}"
        )
    data = path.read_bytes()
    if len(data) != record.index_bytes or hashlib.sha256(data).hexdigest() != record.index_sha256:
        raise CorruptShardError(
            f"teacher cache index {path} has {len(data)} bytes and another SHA-256 than the manifest records "
            f"({record.index_bytes} bytes); it is truncated or corrupt. {repair_hint(path.parent)}"
        )
    try:
        return from_mapping(ShardIndex, json.loads(data))
    except (json.JSONDecodeError, ConfigError) as error:
        raise CorruptShardError(f"teacher cache index {path} is not a valid index ({error}). {repair_hint(path.parent)}") from None


def check_shard_file(path: Path, record: ShardRecord, verify: VerifyMode) -> None:
    """Check a shard file against its manifest record: its size, and with "sha256" its SHA-256.

    Raises:
        CorruptShardError: the file is missing, truncated, longer than recorded, or changed.
    """
    if not path.is_file():
        raise CorruptShardError(f"teacher cache shard {path} is missing. {repair_hint(path.parent)}")
    size = path.stat().st_size
    if size < record.bytes:
        raise CorruptShardError(
            f"teacher cache shard {path} is truncated: it has {size} of its {record.bytes} bytes. {repair_hint(path.parent)}"
        )
    if size > record.bytes:
        raise CorruptShardError(
            f"teacher cache shard {path} has {size} bytes, but the manifest records {record.bytes}; it was changed "
            f"after it was written. {repair_hint(path.parent)}"
        )
    if verify == "sha256" and sha256_file(path) != record.sha256:
        raise CorruptShardError(
            f"teacher cache shard {path} is corrupt: its SHA-256 differs from the one the manifest records. "
            f"{repair_hint(path.parent)}"
        )


def repair_hint(stage_dir: Path) -> str:
    """Return the advice, for error messages, on how to repair a damaged shard of `stage_dir`."""
    return (
        f"Delete the damaged file and rerun `alignkd cache-teacher` with the same config and --out {stage_dir.parent}: "
        "it checks the listed shards and writes the missing ones again"
    )


def index_bytes(index: ShardIndex) -> bytes:
    # Compact: an index has one entry per sample in every column.
    return (json.dumps(asdict(index), separators=(",", ":")) + "\n").encode("utf-8")


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file next to `path`, flush it to disk, then rename it to `path`.

    A reader (or a resumed writer) therefore finds either the complete file or none.
    """
    temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    # The rename is durable only once the folder entry is on disk; platforms that cannot open a
    # folder (Windows) skip this step.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=1, sort_keys=False) + "\n").encode("utf-8")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CacheError(
            f"{path} is not valid JSON ({error}); it was damaged after it was written. {repair_hint(path.parent)}"
        ) from None
