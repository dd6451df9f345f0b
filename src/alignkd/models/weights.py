"""Read and write transformers-style weight files, and check state dict keys strictly.

Layouts read (first match wins): `model.safetensors`, `model.safetensors.index.json` with its
shards, `pytorch_model.bin`, `pytorch_model.bin.index.json` with its shards. Written:
safetensors, one file or shards named `model-00001-of-0000N.safetensors` with an index.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignkd.errors import ModelError

logger = logging.getLogger(__name__)

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

# Buffers that older transformers versions saved and current ones recompute (RoPE inverse
# frequencies, CLIP position ids). Checkpoints may contain them, and they carry no learned values.
LEGACY_BUFFER_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")

# Keys listed in an error before the list is cut short.
_MAX_LISTED_KEYS = 20


def _list_keys(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return shown + (f" ... and {more} more" if more > 0 else "")


def find_weight_files(model_dir: str | Path) -> list[Path]:
    """Return the weight files of `model_dir` in one of the supported layouts."""
    model_dir = Path(model_dir)
    for single, index in ((SAFETENSORS_FILE, SAFETENSORS_INDEX), (BIN_FILE, BIN_INDEX)):
        if (model_dir / single).is_file():
            return [model_dir / single]
        if (model_dir / index).is_file():
            return _shards_of_index(model_dir / index)
    raise ModelError(
        f"no weights found in {model_dir}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {BIN_FILE} or {BIN_INDEX}"
    )


def _shards_of_index(index_path: Path) -> list[Path]:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ModelError(f"{index_path} is not a valid shard index (needs a 'weight_map'): {error}") from None

    shards = [index_path.parent / name for name in sorted(set(weight_map.values()))]
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        raise ModelError(f"{index_path} lists shard files that do not exist: {', '.join(missing)}")
    return shards


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Files written with the legacy (non-zip) serialisation cannot be memory-mapped.
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(model_dir: str | Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Read every tensor of `model_dir`'s weights; floating tensors are cast to `dtype` if given."""
    state: dict[str, torch.Tensor] = {}
    for path in find_weight_files(model_dir):
        for key, tensor in _read_file(path).items():
            if key in state:
                raise ModelError(f"key {key} appears in more than one weight file of {model_dir}")
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            state[key] = tensor
    return state


def drop_legacy_buffers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove buffers that older transformers saved (see LEGACY_BUFFER_SUFFIXES)."""
    dropped = [key for key in state if key.endswith(LEGACY_BUFFER_SUFFIXES)]
    for key in dropped:
        del state[key]
    if dropped:
        logger.debug("ignored %d legacy buffer keys such as %s", len(dropped), dropped[0])
    return state


def check_state_dict(
    state: Mapping[str, torch.Tensor],
    expected_shapes: Mapping[str, torch.Size],
    *,
    optional: Iterable[str] = (),
    source: str,
) -> None:
    """Raise ModelError listing missing keys, unexpected keys and shape mismatches.

    `optional` keys may be absent (for example `lm_head.weight` when it is tied to the input
    embeddings). `source` names the checkpoint in the message.
    """
    optional = set(optional)
    missing = set(expected_shapes) - set(state) - optional
    unexpected = set(state) - set(expected_shapes)
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(expected_shapes[key])}"
        for key in sorted(set(state) & set(expected_shapes))
        if tuple(state[key].shape) != tuple(expected_shapes[key])
    ]
    if not (missing or unexpected or mismatched):
        return

    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_list_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_list_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched[:_MAX_LISTED_KEYS])}")
    raise ModelError(
        f"{source} does not match the model built from its config: "
        + ". ".join(problems)
        + ". Check that config.json belongs to these weights"
    )


def remove_weight_files(output_dir: Path) -> None:
    """Delete weight files of an earlier save in `output_dir`, so that no stale shard stays."""
    patterns = ("model*.safetensors", SAFETENSORS_INDEX, "pytorch_model*.bin", BIN_INDEX)
    for pattern in patterns:
        for path in output_dir.glob(pattern):
            logger.info("removing old weight file %s", path)
            path.unlink()


def write_state_dict(
    state: Mapping[str, torch.Tensor], output_dir: str | Path, max_shard_bytes: int | None = None
) -> list[Path]:
    """Write `state` as safetensors into `output_dir`, sharded when it exceeds `max_shard_bytes`.

    Tensors must not share storage (drop tied duplicates first). A tensor larger than
    `max_shard_bytes` gets a shard of its own. Returns the written weight files.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_weight_files(output_dir)

    tensors = {key: tensor.detach().to("cpu").contiguous() for key, tensor in state.items()}
    total_bytes = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    metadata = {"format": "pt"}

    if max_shard_bytes is None or total_bytes <= max_shard_bytes:
        path = output_dir / SAFETENSORS_FILE
        save_file(tensors, str(path), metadata=metadata)
        return [path]

    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for key, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][key] = tensor
        shard_bytes += size

    weight_map = {}
    paths = []
    for number, shard in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(output_dir / name), metadata=metadata)
        weight_map.update({key: name for key in shard})
        paths.append(output_dir / name)

    index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    (output_dir / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return paths


def is_zero3_partitioned(parameters: Iterable[nn.Parameter]) -> bool:
    """Return True when DeepSpeed ZeRO-3 has partitioned the parameters (they carry a `ds_id`)."""
    return any(hasattr(parameter, "ds_id") for parameter in parameters)


@contextmanager
def gathered_parameters(parameters: list[nn.Parameter], modify: bool) -> Iterator[None]:
    """Gather ZeRO-3 partitioned `parameters` whole inside the block; do nothing for other parameters.

    With `modify`, changes made on rank 0 are scattered back to every rank on exit.
    """
    if not is_zero3_partitioned(parameters):
        yield
        return

    # NOTE: this DeepSpeed path is untested here (no GPU or DeepSpeed in the test environment).
    import deepspeed

    with deepspeed.zero.GatheredParameters(parameters, modifier_rank=0 if modify else None):
        yield
