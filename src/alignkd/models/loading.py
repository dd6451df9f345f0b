"""Load and save VLMs in their native formats, from local files only.

- MobileVLM: config.json with model_type "mobilevlm" and MobileVLM's key names (see
  mobilevlm.py), weights in safetensors or .bin, single or sharded. Loading is strict: every
  model key must be in the checkpoint and every checkpoint key in the model.
- LLaVA: transformers' LlavaForConditionalGeneration folder (save_pretrained layout) with its
  processor files.

The tokenizer and image processor are read from the same folder. Nothing touches the hub.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from alignkd.errors import ModelError
from alignkd.models.adapters import LLAVA_TOWER_EXTRA_TOKENS, Family, get_vlm_adapter, unwrap_model
from alignkd.models.mobilevlm import (
    MobileVLMForCausalLM,
    mobilevlm_config_from_dict,
    mobilevlm_config_to_dict,
    resolve_vision_config,
)
from alignkd.models.vision import load_image_processor
from alignkd.models.weights import (
    check_state_dict,
    drop_legacy_buffers,
    gathered_parameters,
    read_state_dict,
    write_state_dict,
)

logger = logging.getLogger(__name__)

# get_vlm_adapter lives in adapters.py and is re-exported here, next to the loaders.
__all__ = ["LoadedVLM", "get_vlm_adapter", "load_projector_weights", "load_vlm", "save_vlm"]

_MODEL_TYPES: dict[str, Family] = {"mobilevlm": "mobilevlm", "llava": "llava"}

# Key prefixes under which a projector may be stored (MobileVLM's mm_projector.bin uses the first).
_PROJECTOR_PREFIXES = ("model.mm_projector.", "model.multi_modal_projector.", "mm_projector.", "multi_modal_projector.")


@dataclass
class LoadedVLM:
    """A VLM with what it needs to turn text and images into inputs.

    Fields:
        model: MobileVLMForCausalLM or LlavaForConditionalGeneration, in eval mode.
        tokenizer: the tokenizer saved with the model.
        image_processor: the saved image processor, or CLIP preprocessing at the tower's size.
        family: "mobilevlm" or "llava".
    """

    model: nn.Module
    tokenizer: Any
    image_processor: Any
    family: Family


def read_config(model_dir: Path) -> dict[str, Any]:
    """Read and parse the config.json of `model_dir`."""
    if not model_dir.is_dir():
        raise ModelError(f"model folder not found: {model_dir}")
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelError(f"{model_dir} has no config.json; pass the folder of a saved model")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelError(f"{path} is not valid JSON: {error}") from None


def detect_family(config: Mapping[str, Any], source: str) -> Family:
    """Return the family named by config.json's model_type; raise ModelError for any other."""
    model_type = config.get("model_type")
    if model_type not in _MODEL_TYPES:
        raise ModelError(
            f"{source}: model_type {model_type!r} is not supported; expected one of {', '.join(_MODEL_TYPES)}"
        )
    return _MODEL_TYPES[model_type]


def _load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load the tokenizer from {model_dir}: {error}") from None


def _check_projector_type(requested: str | None, actual: str, source: str) -> None:
    if requested is not None and requested != actual:
        raise ModelError(
            f"{source} has projector type {actual!r} but projector type {requested!r} was requested; "
            "drop the request or pick a checkpoint with that projector"
        )


def _load_mobilevlm(
    model_dir: Path, config_data: dict[str, Any], dtype: torch.dtype | None, projector_type: str | None
):
    from accelerate import init_empty_weights

    source = str(model_dir / "config.json")
    config = mobilevlm_config_from_dict(config_data, source)
    _check_projector_type(projector_type, config.mm_projector_type, source)
    resolve_vision_config(config, model_dir=str(model_dir))

    # Parameters are created on the meta device and replaced by the checkpoint's tensors, so
    # no random initialisation runs and the checkpoint's dtype is kept.
    with init_empty_weights():
        model = MobileVLMForCausalLM(config)

    state = drop_legacy_buffers(read_state_dict(model_dir, dtype=dtype))
    tied = bool(config.tie_word_embeddings)
    if tied:
        # A tied head is the input embedding; a copy in the checkpoint is redundant.
        state.pop("lm_head.weight", None)
    expected = {key: tensor.shape for key, tensor in model.state_dict().items()}
    check_state_dict(state, expected, optional={"lm_head.weight"} if tied else (), source=f"weights in {model_dir}")

    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.tie_weights()

    left_on_meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left_on_meta:
        raise ModelError(f"weights in {model_dir} left these tensors uninitialised: {', '.join(left_on_meta[:10])}")

    model.config.dtype = model.get_input_embeddings().weight.dtype
    return model


def _load_llava(model_dir: Path, dtype: torch.dtype | None, projector_type: str | None):
    from transformers import LlavaForConditionalGeneration

    _check_projector_type(projector_type, "mlp2x_gelu", str(model_dir / "config.json"))
    model, info = LlavaForConditionalGeneration.from_pretrained(
        str(model_dir), dtype=dtype or "auto", local_files_only=True, output_loading_info=True
    )
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = info.get(kind) or []
        if keys:
            problems.append(f"{kind.replace('_', ' ')} ({len(keys)}): {', '.join(map(str, sorted(keys)[:20]))}")
    if problems:
        raise ModelError(f"weights in {model_dir} do not match the LLaVA config: " + ". ".join(problems))
    return model


def read_num_vision_tokens(path: str | Path) -> int:
    """Vision tokens per image of the model in `path`, from its config alone (no weights are read).

    The model is built on the meta device, where parameters take no memory, so the count
    comes from the same code that runs in training.
    """
    from accelerate import init_empty_weights

    model_dir = Path(path)
    config_data = read_config(model_dir)
    family = detect_family(config_data, str(model_dir / "config.json"))
    if family == "mobilevlm":
        config = mobilevlm_config_from_dict(config_data, str(model_dir / "config.json"))
        resolve_vision_config(config, model_dir=str(model_dir))
        with init_empty_weights():
            model = MobileVLMForCausalLM(config)
    else:
        from transformers import AutoConfig, LlavaForConditionalGeneration

        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
        with init_empty_weights():
            model = LlavaForConditionalGeneration(config)
    return get_vlm_adapter(model).num_vision_tokens


def load_vlm(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    projector_type: str | None = None,
) -> LoadedVLM:
    """Load a MobileVLM or LLaVA model folder with its tokenizer and image processor.

    Args:
        path: a local folder with config.json, weights and tokenizer files.
        dtype: cast floating weights to this dtype; the checkpoint's dtype is kept when None.
        device: move the model there after loading (it is loaded on CPU).
        projector_type: when given, the checkpoint's projector type must be this one.

    Raises:
        ModelError: the folder, config, weights or tokenizer is missing or does not match.
    """
    model_dir = Path(path)
    if not model_dir.is_dir():
        raise ModelError(f"model folder not found: {model_dir}")
    config_data = read_config(model_dir)
    family = detect_family(config_data, str(model_dir / "config.json"))

    if family == "mobilevlm":
        model = _load_mobilevlm(model_dir, config_data, dtype, projector_type)
    else:
        model = _load_llava(model_dir, dtype, projector_type)
    model.eval()
    if device is not None:
        model.to(device)

    adapter = get_vlm_adapter(model)
    tokenizer = _load_tokenizer(model_dir)
    image_processor = load_image_processor(model_dir, adapter.image_size)
    logger.info(
        "loaded %s model from %s (%d vision tokens per image, projector %s)",
        family,
        model_dir,
        adapter.num_vision_tokens,
        adapter.projector_type,
    )
    return LoadedVLM(model=model, tokenizer=tokenizer, image_processor=image_processor, family=family)


def _native_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copy the model's state dict to CPU under its own keys, without the tied LM head."""
    with gathered_parameters(list(model.parameters()), modify=False):
        # NOTE: under ZeRO-3 this gathers the whole model on every rank at once; very large
        # models need a rank-0-only consolidation instead.
        state = {key: tensor.detach().cpu().clone() for key, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


def save_vlm(
    model: nn.Module,
    tokenizer: Any,
    image_processor: Any,
    output_dir: str | Path,
    *,
    max_shard_bytes: int | None = None,
) -> None:
    """Write `model` in its family's native format with the tokenizer and image processor.

    The model's own key names are written, with no wrapper prefix and nothing else: pass the
    student itself, not a module that also contains the teacher. MobileVLM folders get MobileVLM's
    config.json and safetensors weights (sharded above `max_shard_bytes`); LLaVA folders are
    written by transformers' save_pretrained, with a LlavaProcessor.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    adapter = get_vlm_adapter(model)
    model = unwrap_model(model)

    if adapter.family == "mobilevlm":
        dtype = model.get_input_embeddings().weight.dtype
        config_data = mobilevlm_config_to_dict(model.config, dtype)
        (output_dir / "config.json").write_text(
            json.dumps(config_data, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        write_state_dict(_native_state_dict(model), output_dir, max_shard_bytes)
        tokenizer.save_pretrained(str(output_dir))
        image_processor.save_pretrained(str(output_dir))
    else:
        from transformers import LlavaProcessor

        save_kwargs = {} if max_shard_bytes is None else {"max_shard_size": max_shard_bytes}
        model.save_pretrained(str(output_dir), **save_kwargs)
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=model.config.vision_config.patch_size,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
            num_additional_image_tokens=LLAVA_TOWER_EXTRA_TOKENS[model.config.vision_config.model_type],
        )
        processor.save_pretrained(str(output_dir))
    logger.info("saved %s model to %s", adapter.family, output_dir)


def _read_projector_source(source: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.is_file():
        raise ModelError(f"projector weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_projector_weights(model: nn.Module, source: str | Path | Mapping[str, torch.Tensor]) -> None:
    """Load projector weights (for example MobileVLM's pretraining-stage mm_projector.bin) strictly.

    Keys may carry the model's prefix (`model.mm_projector.`, `model.multi_modal_projector.`)
    or none. Under DeepSpeed ZeRO-3 the projector's parameters are gathered for the load and
    re-partitioned afterwards, since a partitioned parameter has an empty local shape.
    """
    adapter = get_vlm_adapter(model)
    projector = adapter.projector
    label = "the given projector state dict" if isinstance(source, Mapping) else str(source)

    state = {}
    for key, tensor in _read_projector_source(source).items():
        for prefix in _PROJECTOR_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        state[key] = tensor

    parameters = list(projector.parameters())
    with gathered_parameters(parameters, modify=True):
        expected = {key: tensor.shape for key, tensor in projector.state_dict().items()}
        check_state_dict(state, expected, source=label)
        projector.load_state_dict(state, strict=True)
    logger.info("loaded %d projector tensors from %s", len(state), label)
