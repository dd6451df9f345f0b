"""The CLIP vision tower: its config from local files, its feature selection and its image processor.

MobileVLM configs name the tower by hub id (`mm_vision_tower`). Nothing here downloads. The
CLIP config comes from a vision config stored in our own config.json, from a local folder, or
from `KNOWN_VISION_TOWERS`, a table of the sizes of public OpenAI CLIP checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import CLIPVisionConfig

from alignkd.errors import ModelError

logger = logging.getLogger(__name__)

# Sizes of the vision models of public OpenAI CLIP checkpoints (the `vision_config` of each
# hub checkpoint's config.json). All of them use quick_gelu and LayerNorm epsilon 1e-5.
KNOWN_VISION_TOWERS: dict[str, dict[str, Any]] = {
    "openai/clip-vit-large-patch14-336": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "patch_size": 14,
        "image_size": 336,
        "projection_dim": 768,
    },
    "openai/clip-vit-large-patch14": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "patch_size": 14,
        "image_size": 224,
        "projection_dim": 768,
    },
    "openai/clip-vit-base-patch16": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "patch_size": 16,
        "image_size": 224,
        "projection_dim": 512,
    },
    "openai/clip-vit-base-patch32": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "patch_size": 32,
        "image_size": 224,
        "projection_dim": 512,
    },
}
_KNOWN_TOWER_COMMON = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}

VISION_SELECT_FEATURES = ("patch", "cls_patch")
"""`mm_vision_select_feature` values: "patch" drops the CLS token, "cls_patch" keeps it."""


def resolve_clip_vision_config(
    tower: str | None, stored: Mapping[str, Any] | None, *, model_dir: str | Path | None = None
) -> CLIPVisionConfig:
    """Return the CLIP vision config of a MobileVLM tower, reading only local files.

    Order: the vision config stored in the model's config.json (`stored`), then `tower` as a
    local folder (absolute, or relative to the current directory or to `model_dir`), then the
    table of known hub ids. Raises ModelError naming the tower when none applies.
    """
    if stored:
        try:
            return CLIPVisionConfig(**dict(stored))
        except (StrictDataclassError, TypeError, ValueError) as error:
            raise ModelError(f"invalid mm_vision_config {dict(stored)}: {error}") from None

    if not tower:
        raise ModelError("the config has neither mm_vision_tower nor mm_vision_config; cannot build the vision tower")

    for folder in _candidate_folders(tower, model_dir):
        if (folder / "config.json").is_file():
            logger.info("reading the vision tower config from %s", folder)
            return CLIPVisionConfig.from_pretrained(str(folder), local_files_only=True)

    if tower in KNOWN_VISION_TOWERS:
        return CLIPVisionConfig(**KNOWN_VISION_TOWERS[tower], **_KNOWN_TOWER_COMMON)

    known = ", ".join(sorted(KNOWN_VISION_TOWERS))
    raise ModelError(
        f"vision tower {tower!r} is neither a local folder with a config.json nor a known CLIP id ({known}); "
        "point mm_vision_tower at a local CLIP folder, or add mm_vision_config to config.json"
    )


def _candidate_folders(tower: str, model_dir: str | Path | None) -> list[Path]:
    folders = [Path(tower)]
    if model_dir is not None and not Path(tower).is_absolute():
        folders.append(Path(model_dir) / tower)
    return folders


def clip_config_to_dict(config: CLIPVisionConfig) -> dict[str, Any]:
    """Return the fields of a CLIP vision config that define the architecture, as plain JSON data."""
    fields = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_channels",
        "image_size",
        "patch_size",
        "hidden_act",
        "layer_norm_eps",
        "attention_dropout",
        "initializer_range",
        "initializer_factor",
        "projection_dim",
    )
    return {name: getattr(config, name) for name in fields if hasattr(config, name)}


def select_vision_features(
    tower: torch.nn.Module,
    pixel_values: torch.Tensor,
    select_layer: int | list[int],
    drop_cls: bool,
) -> torch.Tensor:
    """Run `tower` and return the features of hidden layer `select_layer`.

    Args:
        tower: a transformers vision model (for example CLIPVisionModel).
        pixel_values: [images, 3, height, width].
        select_layer: index into the tower's hidden states (embeddings output first), or a list
            of indices whose features are concatenated along the width.
        drop_cls: drop the first (CLS) token.

    Returns:
        [images, tokens, width * len(select_layer)].

    Raises:
        ModelError: the tower returned no hidden states (CLIP in some transformers 5 releases
            drops them from its output) or fewer than it has layers plus one.
    """
    parameter = next(tower.parameters())
    outputs = tower(pixel_values.to(device=parameter.device, dtype=parameter.dtype), output_hidden_states=True)
    hidden_states = getattr(outputs, "hidden_states", None)
    if hidden_states is None:
        raise ModelError(
            f"vision tower returned no hidden states ({type(tower).__name__} with output_hidden_states=True); "
            "the selected feature layer cannot be read. Use a transformers release whose vision models "
            "return hidden states (this package is tested with the one in its requirements)"
        )

    expected = getattr(getattr(tower, "config", None), "num_hidden_layers", None)
    if expected is not None and len(hidden_states) != expected + 1:
        raise ModelError(
            f"vision tower returned {len(hidden_states)} hidden states, expected {expected + 1} "
            f"(embeddings plus {expected} layers); feature layer {select_layer} would be the wrong one"
        )

    layers = [select_layer] if isinstance(select_layer, int) else list(select_layer)
    features = torch.cat([hidden_states[index] for index in layers], dim=-1)
    if drop_cls:
        features = features[:, 1:]
    return features


def clip_hidden_state(model: torch.nn.Module, pixel_values: torch.Tensor, select_layer: int) -> torch.Tensor:
    """Compute hidden state `select_layer` of a CLIPVisionModel, running only the layers it needs.

    The numbering is that of `hidden_states` with output_hidden_states=True. Index 0 is the
    embeddings output after `pre_layrnorm`, index i the output of encoder layer i - 1, and
    negative indices count from the end. Computing it directly skips the layers after the
    selected one (the last layer for MobileVLM's -2). It also avoids transformers' output
    capturing, which in transformers 5.25 records every CLIP layer twice once an enclosing
    LlamaModel (MobileVLM nests the tower inside it) has installed its own capture hooks.

    Returns:
        [images, tokens, width], CLS token first.
    """
    layers = model.encoder.layers
    count = len(layers) + 1
    if not -count <= select_layer < count:
        raise ModelError(f"vision feature layer {select_layer} is out of range for {count} hidden states")

    parameter = next(model.parameters())
    hidden = model.pre_layrnorm(model.embeddings(pixel_values.to(device=parameter.device, dtype=parameter.dtype)))
    for layer in layers[: select_layer % count]:
        output = layer(hidden, None)
        hidden = output[0] if isinstance(output, tuple) else output
    return hidden


def num_patch_features(image_size: int, patch_size: int, keep_cls: bool) -> int:
    """Return the number of tokens a ViT makes from a square image: one per patch, plus CLS if kept."""
    if image_size % patch_size != 0:
        raise ModelError(f"vision image_size {image_size} is not a multiple of patch_size {patch_size}")
    patches = (image_size // patch_size) ** 2
    return patches + (1 if keep_cls else 0)


def default_image_processor(image_size: int):
    """Build CLIP preprocessing for square images of `image_size` pixels (resize, center crop, CLIP mean/std)."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )


def load_image_processor(model_dir: str | Path, image_size: int):
    """Load the image processor saved in `model_dir`, else build CLIP preprocessing at `image_size`.

    A saved processor is read from preprocessor_config.json, or from the `image_processor`
    entry of processor_config.json (where transformers 5 writes a LLaVA processor's).
    """
    model_dir = Path(model_dir)
    saved = ("preprocessor_config.json", "processor_config.json")
    if any((model_dir / name).is_file() for name in saved):
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(str(model_dir), local_files_only=True)
    logger.info("no saved image processor in %s; using CLIP preprocessing at %d px", model_dir, image_size)
    return default_image_processor(image_size)
