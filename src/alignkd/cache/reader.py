"""Train from a teacher cache: `CachedTeacher` reads the stored outputs in place of running the teacher.

`distill` with `teacher_cache: DIR` opens the cache instead of loading the teacher. Per stage,
`bind` checks the cache against the run (the fingerprint components, see
`alignkd.cache.fingerprint`) and maps each dataset row to its sample key. Each call then reads
the batch's entries, checks each sample's hash (tokens, labels and image), and assembles the teacher output in the
layout a live teacher returns (`alignkd.cache.assembly`).

A partial cache (written with `--min-length`) contains only the longer samples. A live teacher
computes the others, on just those samples, and they are reduced to the same top-k form and
merged with the cached rows in batch order. So every row of the run is distilled with the same
top-k loss. The live teacher must be the one that wrote the cache (checked by its fingerprint).

Shards are opened lazily (memory-mapped by safetensors) and checked when first opened: their
size always, and their SHA-256 unless the check is set to "size".
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from alignkd.cache.assembly import CachedTeacherOutput, assemble_teacher_output
from alignkd.cache.entries import SampleEntry, entry_from_tensors, split_teacher_output
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
    LOGITS,
    CacheError,
    CacheMismatchError,
    CorruptShardError,
    ShardIndex,
    StageManifest,
    VerifyMode,
    check_shard_file,
    read_index,
    read_manifest,
    repair_hint,
)
from alignkd.cache.keys import batch_sample_hashes, sample_keys
from alignkd.config import ConfigError
from alignkd.constants import IMAGE_PLACEHOLDER_ID
from alignkd.data.config import DataConfig
from alignkd.data.dataset import LlavaDataset
from alignkd.losses.objective import ResolvedObjective
from alignkd.models.loading import LoadedVLM, get_vlm_adapter
from alignkd.training.config import DistillConfig, StageConfig
from alignkd.training.teacher import LiveTeacher, model_dtype

logger = logging.getLogger(__name__)

MAX_OPEN_SHARDS = 64
"""Shards kept open (memory-mapped) at a time; the least recently read one is closed first."""

# Sample keys named in a message about missing samples.
_SHOWN_KEYS = 5


class _ShardReader:
    """Lazy, checked access to the shard files of one stage."""

    def __init__(self, folder: Path, manifest: StageManifest, verify: VerifyMode):
        self.folder = folder
        self.records = manifest.shards
        self.verify = verify
        self._open: OrderedDict[int, tuple[Any, set[str]]] = OrderedDict()
        self._checked: set[int] = set()

    def read(self, shard: int, name: str) -> torch.Tensor | None:
        """Read the tensor `name` of shard number `shard`; return None when the shard has no such tensor."""
        handle, names = self._handle(shard)
        if name not in names:
            return None
        try:
            return handle.get_tensor(name)
        except SafetensorError as error:
            path = self.folder / self.records[shard].file
            raise CorruptShardError(f"teacher cache shard {path} cannot be read ({error}). {repair_hint(self.folder)}") from None

    def _handle(self, shard: int) -> tuple[Any, set[str]]:
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]

        record = self.records[shard]
        path = self.folder / record.file
        if shard not in self._checked:
            check_shard_file(path, record, self.verify)
            self._checked.add(shard)
        try:
            handle = safe_open(str(path), framework="pt")
            names = set(handle.keys())
        except SafetensorError as error:
            raise CorruptShardError(f"teacher cache shard {path} cannot be read ({error}). {repair_hint(self.folder)}") from None

        self._open[shard] = (handle, names)
        if len(self._open) > MAX_OPEN_SHARDS:
            self._open.popitem(last=False)
        return handle, names


class _StageStore:
    """The manifest, index and shards of one stage's cache."""

    def __init__(self, folder: Path, manifest: StageManifest, verify: VerifyMode):
        self.folder = folder
        self.manifest = manifest
        self.shards = _ShardReader(folder, manifest, verify)
        self._locations: dict[str, tuple[int, int]] | None = None
        self._indexes: list[ShardIndex] = []

    @classmethod
    def open(cls, root: Path, stage: str, verify: VerifyMode) -> _StageStore:
        folder = root / stage
        manifest = read_manifest(folder)
        if manifest is None:
            raise CacheError(
                f"the teacher cache {root} has no '{stage}' stage ({folder / 'manifest.json'} not found). Write it with "
                f"`alignkd cache-teacher CONFIG.yaml --out {root}` using this run's config"
            )
        if not manifest.complete:
            raise CacheError(
                f"the teacher cache of stage '{stage}' in {folder} is incomplete: {manifest.covered_batches()} of "
                f"{manifest.total_batches} batches are written. Rerun `alignkd cache-teacher` with the same config "
                f"and --out {root} to finish it"
            )
        return cls(folder, manifest, verify)

    def load_index(self) -> None:
        """Read every shard's index (checked against the manifest) into a key -> location map."""
        # NOTE: the whole index stays in memory as Python objects, about 340 bytes per sample
        # (tracemalloc, 15-character keys), so about 1.2 GB per process for 3.6M samples.
        if self._locations is not None:
            return
        locations: dict[str, tuple[int, int]] = {}
        for shard, record in enumerate(self.manifest.shards):
            index: ShardIndex = read_index(self.folder / record.index_file, record)
            for position, key in enumerate(index.keys):
                if key in locations:
                    raise CorruptShardError(
                        f"sample key {key!r} is stored twice in the teacher cache {self.folder} ({record.file} and "
                        f"{self.manifest.shards[locations[key][0]].file}). Write the cache again"
                    )
                locations[key] = (shard, position)
            self._indexes.append(index)
        self._locations = locations

    def locate(self, key: str) -> tuple[int, int] | None:
        return self._locations.get(key)

    def token_hash(self, location: tuple[int, int]) -> str:
        shard, position = location
        return self._indexes[shard].token_hashes[position]

    def read_entry(self, key: str, location: tuple[int, int]) -> SampleEntry:
        shard, position = location
        index = self._indexes[shard]
        return entry_from_tensors(
            lambda name: self.shards.read(shard, name),
            position,
            key=key,
            token_hash=index.token_hashes[position],
            has_image=index.has_image[position],
            attention_rows=index.attention_rows[position],
            sequence_tokens=index.sequence_tokens[position],
            vocab_size=self.manifest.teacher.vocab_size,
            temperature=float(self.manifest.fingerprint["temperature"]),
        )


class CachedTeacher:
    """A `TeacherSource` that reads the teacher's outputs from a cache written by `alignkd cache-teacher`.

    Build it with `open`, then `bind` it to each stage's dataset before training the stage.

    Attributes:
        model_sizes: {"teacher_heads": .., "teacher_width": ..}, which size the objective's adapters.
        num_vision_tokens: the teacher's vision tokens per image. The dataset's length check
            must count at least this many per image, so that every kept sample was cached.
        needs_live_teacher: some stage's cache is partial, so uncached samples need the teacher.
    """

    def __init__(self, root: Path, stores: dict[str, _StageStore], config: DistillConfig):
        self.root = root
        self.stores = stores
        self.config = config
        first = next(iter(stores.values())).manifest.teacher
        self.model_sizes = {"teacher_heads": first.heads, "teacher_width": first.width}
        self.num_vision_tokens = first.num_vision_tokens
        self.vocab_size = first.vocab_size
        self.needs_live_teacher = any(store.manifest.is_partial for store in stores.values())
        self._live: LiveTeacher | None = None
        self._store: _StageStore | None = None
        self._row_keys: dict[int, str] = {}

    @classmethod
    def open(cls, path: str | Path, *, config: DistillConfig, verify: VerifyMode | None = None) -> CachedTeacher:
        """Open the cache of every stage that `config` runs, without reading any shard yet.

        Args:
            path: the folder given to `alignkd cache-teacher --out`.
            config: the distill config of the run.
            verify: how shards are checked when first opened: "sha256" (default) or "size".

        Raises:
            CacheError: the folder or a stage is missing, incomplete or of another format.
            CacheMismatchError: the stages were written by different teachers.
            ConfigError: a partial cache without teacher.path in the config.
        """
        root = Path(path)
        if not root.is_dir():
            raise CacheError(
                f"teacher cache folder not found: {root}. Write it with `alignkd cache-teacher CONFIG.yaml --out {root}`"
            )
        if verify is None:
            verify = getattr(config, "teacher_cache_verify", "sha256")
        stores = {name: _StageStore.open(root, name, verify) for name, _ in config.stages()}

        manifests = [store.manifest for store in stores.values()]
        for manifest in manifests[1:]:
            check_components(
                manifests[0].fingerprint,
                manifest.fingerprint,
                TEACHER_COMPONENTS,
                cache_dir=root / manifest.stage,
                advice=f"the stages of one run must be cached with one teacher; write stage '{manifest.stage}' again",
            )

        teacher = cls(root, stores, config)
        partial = [store.manifest.stage for store in stores.values() if store.manifest.is_partial]
        if partial and config.teacher is None:
            raise ConfigError(
                f"the teacher cache {root} contains only the longer samples of stage {', '.join(partial)}; set teacher.path "
                "so that the other samples are computed by the live teacher"
            )
        logger.info(
            "Training from the teacher cache in %s (stages: %s)%s",
            root,
            ", ".join(stores),
            "; the live teacher computes the uncached samples" if partial else "; the teacher is not loaded",
        )
        return teacher

    # ---- Live teacher for partial caches ----------------------------------------------

    def attach_live_teacher(self, live: LiveTeacher, loaded: LoadedVLM) -> None:
        """Use `live` for the samples that a partial cache does not contain, after checking that it wrote the cache.

        Raises:
            CacheMismatchError: the teacher's files, dtype or vision tokens differ from the cache's.
        """
        adapter = get_vlm_adapter(loaded.model)
        current = teacher_components(self.config.teacher.path, model_dtype(loaded.model), adapter.num_vision_tokens)
        for store in self.stores.values():
            check_components(
                store.manifest.fingerprint,
                current,
                TEACHER_COMPONENTS,
                cache_dir=store.folder,
                advice=(
                    "The uncached samples would be distilled from another teacher than the cached ones. Set teacher.path "
                    "and teacher.dtype to the teacher that wrote the cache, or write a new cache"
                ),
            )
        self._live = live

    @property
    def model(self) -> torch.nn.Module | None:
        """The live teacher's model (partial caches only), so that DeepSpeed can wrap it."""
        return None if self._live is None else self._live.model

    @model.setter
    def model(self, model: torch.nn.Module) -> None:
        if self._live is None:
            raise CacheError("this teacher cache has no live teacher whose model could be replaced")
        self._live.model = model

    # ---- Binding a stage ------------------------------------------------------------------

    def bind(self, stage: str, stage_config: StageConfig, dataset: LlavaDataset, tokenizer: Any) -> None:
        """Check the stage's cache against the run and map the dataset's rows to sample keys.

        Raises:
            CacheMismatchError: a run component differs from the cache's.
            CacheError: the cache lacks an output the objective reads, or (for a complete cache)
                a training sample.
        """
        if stage not in self.stores:
            raise CacheError(f"the teacher cache {self.root} was opened without stage '{stage}'")
        store = self.stores[stage]
        settings = self.config.loss.resolved()
        needed = needed_outputs(settings)
        self._check_run(store, stage_config.data, tokenizer, settings, needed)

        store.load_index()
        keys = sample_keys(dataset.records)
        self._row_keys = {int(row): keys[int(row)] for row in dataset.rows}
        self._store = store

        uncached = [key for key in self._row_keys.values() if store.locate(key) is None]
        if uncached and not store.manifest.is_partial:
            shown = ", ".join(repr(key) for key in uncached[:_SHOWN_KEYS])
            raise CacheError(
                f"{len(uncached)} of the {len(self._row_keys)} training samples of stage '{stage}' are not in the teacher "
                f"cache {store.folder} (for example {shown}); the data changed after the cache was written. Write the "
                "cache again with `alignkd cache-teacher`"
            )
        if uncached and self._live is None:
            raise CacheError(
                f"{len(uncached)} training samples of stage '{stage}' are not in the partial teacher cache {store.folder}, "
                "and no live teacher was attached to compute them"
            )
        logger.info(
            "Stage %s: %d of %d training samples are cached%s",
            stage,
            len(self._row_keys) - len(uncached),
            len(self._row_keys),
            f", {len(uncached)} are computed by the live teacher" if uncached else "",
        )

    def _check_run(
        self, store: _StageStore, data: DataConfig, tokenizer: Any, settings: ResolvedObjective, needed: list[str]
    ) -> None:
        names = RUN_COMPONENTS + (LOGIT_COMPONENTS if LOGITS in needed else ())
        check_components(
            store.manifest.fingerprint,
            run_components(data, tokenizer, settings),
            names,
            cache_dir=store.folder,
            advice="Write a new cache for this config with `alignkd cache-teacher`, or restore the settings the cache was made with",
        )
        missing = [kind for kind in needed if kind not in store.manifest.write_settings.outputs]
        if missing:
            raise CacheError(
                f"the teacher cache {store.folder} stores {', '.join(store.manifest.write_settings.outputs)}, but the "
                f"'{settings.preset}' loss also reads the teacher's {', '.join(missing)}. Write the cache with this run's "
                "loss settings"
            )

    # ---- Reading a batch ------------------------------------------------------------------

    def __call__(self, batch: Mapping[str, torch.Tensor], settings: ResolvedObjective) -> CachedTeacherOutput:
        # NOTE: tested on CPU only. On a GPU, entries are read to CPU and moved to the batch's
        # device per sample; that path has not been run.
        store = self._store
        if store is None:
            raise RuntimeError("CachedTeacher.bind(stage, ...) must be called before the first batch")
        if batch.get("sample_index") is None:
            raise CacheError("the batch has no sample_index; the teacher cache finds each sample's entry by its data row")

        keys = [self._key_of_row(int(row)) for row in batch["sample_index"].tolist()]
        hashes = batch_sample_hashes(batch)
        entries: list[SampleEntry | None] = []
        uncached = []
        for sample, (key, sample_hash) in enumerate(zip(keys, hashes)):
            location = store.locate(key)
            if location is None:
                uncached.append(sample)
                entries.append(None)
                continue
            if store.token_hash(location) != sample_hash:
                raise CacheMismatchError(
                    f"sample {key!r} has other token ids, labels or image pixels than when the teacher cache "
                    f"{store.folder} was written; the data file or its image changed. Write the cache again with "
                    "`alignkd cache-teacher`"
                )
            entries.append(store.read_entry(key, location))

        if uncached:
            computed = self._compute_live(batch, uncached, keys, hashes, settings, store)
            for sample, entry in zip(uncached, computed):
                entries[sample] = entry

        teacher = store.manifest.teacher
        return assemble_teacher_output(
            entries,
            batch,
            num_vision_tokens=teacher.num_vision_tokens,
            heads=teacher.heads,
            width=teacher.width,
            logit_positions=settings.teacher_logit_positions,
            needed=needed_outputs(settings),
        )

    def _key_of_row(self, row: int) -> str:
        try:
            return self._row_keys[row]
        except KeyError:
            raise CacheError(
                f"data row {row} is not a sample of the dataset this teacher cache was bound to"
            ) from None

    def _compute_live(
        self,
        batch: Mapping[str, torch.Tensor],
        samples: list[int],
        keys: list[str],
        hashes: list[str],
        settings: ResolvedObjective,
        store: _StageStore,
    ) -> list[SampleEntry]:
        if self._live is None:
            shown = ", ".join(repr(keys[sample]) for sample in samples[:_SHOWN_KEYS])
            raise CacheError(f"samples {shown} are not in the teacher cache {store.folder}, and no live teacher is attached")
        output = self._live(select_samples(batch, samples), settings)
        return split_teacher_output(
            output,
            keys=[keys[sample] for sample in samples],
            token_hashes=[hashes[sample] for sample in samples],
            outputs=needed_outputs(settings),
            top_k=store.manifest.write_settings.top_k,
            temperature=settings.temperature,
            vocab_size=store.manifest.teacher.vocab_size,
            chunk_size=settings.chunk_size,
        )


def select_samples(batch: Mapping[str, torch.Tensor], samples: list[int]) -> dict[str, torch.Tensor]:
    """Select rows `samples` of a collated batch, with their images, trimmed to their longest sample.

    Images are stacked in batch order for the samples that have one, so the images of the
    selected rows are found by their rank among the image rows.
    """
    index = torch.tensor(samples, dtype=torch.long, device=batch["input_ids"].device)
    real = batch["attention_mask"][index].bool()
    columns = torch.arange(real.shape[1], device=real.device)
    width = int((columns[None, :] * real).max()) + 1 if real.any() else real.shape[1]

    selected: dict[str, torch.Tensor] = {}
    for name in ("input_ids", "attention_mask", "labels"):
        if batch.get(name) is not None:
            selected[name] = batch[name][index, :width]
    if batch.get("sample_index") is not None:
        selected["sample_index"] = batch["sample_index"][index]

    image_mask = batch.get("image_mask")
    if image_mask is None:
        image_mask = (batch["input_ids"] == IMAGE_PLACEHOLDER_ID).any(dim=1)
    image_mask = image_mask.bool()
    image_rank = image_mask.long().cumsum(dim=0) - 1
    chosen_images = image_rank[index][image_mask[index]]
    selected["image_mask"] = image_mask[index]
    for name in ("pixel_values", "teacher_pixel_values"):
        if batch.get(name) is not None:
            selected[name] = batch[name][chosen_images.to(batch[name].device)]
    return selected
