"""Model specs for `alignkd init-model`: the sizes of a randomly initialised VLM.

A spec is a mapping (parsed YAML or JSON) loaded strictly into `ModelSpec`, for example:

    family: mobilevlm
    vision: {hidden_size: 32, num_layers: 2, num_heads: 2, patch_size: 8, image_size: 32}
    projector: {type: ldpnetv2, grid_size: 2}
    language: {hidden_size: 64, num_layers: 2, num_heads: 4, num_key_value_heads: 2,
               intermediate_size: 128}

`init_model` builds the model from local objects only; `save_vlm` writes it in the family's
native format.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import torch

from alignkd.config import ConfigError, from_mapping
from alignkd.constants import IMAGE_PLACEHOLDER_TEXT
from alignkd.errors import ModelError
from alignkd.models.adapters import get_vlm_adapter
from alignkd.models.loading import LoadedVLM
from alignkd.models.projectors import check_projector_type
from alignkd.models.vision import VISION_SELECT_FEATURES, default_image_processor

logger = logging.getLogger(__name__)

# A ViT's MLP is this many times its width unless the spec says otherwise (CLIP and ViT use 4).
_VIT_MLP_RATIO = 4

# The CLIP vision tower id written to MobileVLM's `mm_vision_tower` for a random tower; its
# real sizes come from `mm_vision_config`, which init-model always writes.
_RANDOM_TOWER_NAME = "random-clip-vision"

DEFAULT_PROJECTOR_TYPES = {"mobilevlm": "ldpnetv2", "llava": "mlp2x_gelu"}


@dataclass
class VisionSpec:
    """The CLIP vision tower."""

    # Width of the ViT.
    hidden_size: int
    # Number of transformer layers.
    num_layers: int
    # Attention heads per layer (must divide hidden_size).
    num_heads: int
    # Side of a square patch in pixels.
    patch_size: int
    # Side of the square input image in pixels (a multiple of patch_size).
    image_size: int
    # MLP width; 4 x hidden_size when null.
    intermediate_size: int | None = None
    # Hidden state whose features feed the projector (-2 is the penultimate layer's output).
    select_layer: int = -2
    # "patch" drops the CLS token, "cls_patch" keeps it.
    select_feature: str = "patch"

    def validate(self) -> None:
        if self.select_feature not in VISION_SELECT_FEATURES:
            raise ConfigError(
                f"select_feature: expected one of {', '.join(VISION_SELECT_FEATURES)}, got {self.select_feature!r}"
            )
        if self.image_size % self.patch_size != 0:
            raise ConfigError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads != 0:
            raise ConfigError(f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")


@dataclass
class ProjectorSpec:
    """The vision-to-LM projector."""

    # "ldpnetv2" (MobileVLM V2), "ldpnet" (V1), "mlp2x_gelu" (LLaVA-1.5) or "linear"; when
    # null, the family's own: ldpnetv2 for mobilevlm, mlp2x_gelu for llava.
    type: str | None = None
    # ldpnetv2 only: side of the square token grid it pools to (grid_size ** 2 vision tokens).
    grid_size: int = 12

    def validate(self) -> None:
        if self.type is not None:
            try:
                check_projector_type(self.type)
            except ModelError as error:
                raise ConfigError(f"type: {error}") from None
        if self.grid_size < 1:
            raise ConfigError(f"grid_size must be at least 1, got {self.grid_size}")


@dataclass
class LanguageSpec:
    """The LLaMA decoder."""

    # Width of the decoder (and of the vision tokens).
    hidden_size: int
    # Number of decoder layers.
    num_layers: int
    # Query heads per layer (must divide hidden_size).
    num_heads: int
    # MLP width of each layer.
    intermediate_size: int
    # Key/value heads for grouped-query attention; equal to num_heads when null.
    num_key_value_heads: int | None = None
    # Rows of the embedding and LM head; the tokenizer's length when null.
    vocab_size: int | None = None
    # Maximum sequence length (vision tokens included) of the model config.
    max_position_embeddings: int = 2048
    # RoPE base frequency.
    rope_theta: float = 10000.0
    # Epsilon of the RMSNorm layers.
    rms_norm_eps: float = 1e-6
    # Share the LM head's weight with the input embedding.
    tie_word_embeddings: bool = False

    def validate(self) -> None:
        if self.hidden_size % self.num_heads != 0:
            raise ConfigError(f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")
        kv_heads = self.num_key_value_heads or self.num_heads
        if self.num_heads % kv_heads != 0:
            raise ConfigError(f"num_heads {self.num_heads} must be a multiple of num_key_value_heads {kv_heads}")


@dataclass
class ModelSpec:
    """A VLM to initialise at random."""

    # "mobilevlm" (our MobileVLM implementation) or "llava" (transformers' LLaVA, mlp2x_gelu only).
    family: Literal["mobilevlm", "llava"]
    vision: VisionSpec
    language: LanguageSpec
    projector: ProjectorSpec = field(default_factory=ProjectorSpec)
    # How images are made square before resizing; stored in the MobileVLM config.
    image_aspect_ratio: str = "pad"

    def validate(self) -> None:
        if self.projector.type is None:
            self.projector.type = DEFAULT_PROJECTOR_TYPES[self.family]
        if self.family == "llava" and self.projector.type != "mlp2x_gelu":
            raise ConfigError(f"projector.type: LLaVA uses 'mlp2x_gelu', got {self.projector.type!r}")


def _clip_vision_fields(vision: VisionSpec) -> dict[str, Any]:
    return {
        "hidden_size": vision.hidden_size,
        "intermediate_size": vision.intermediate_size or _VIT_MLP_RATIO * vision.hidden_size,
        "num_hidden_layers": vision.num_layers,
        "num_attention_heads": vision.num_heads,
        "patch_size": vision.patch_size,
        "image_size": vision.image_size,
    }


def _llama_fields(language: LanguageSpec, vocab_size: int, tokenizer: Any) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": language.hidden_size,
        "intermediate_size": language.intermediate_size,
        "num_hidden_layers": language.num_layers,
        "num_attention_heads": language.num_heads,
        "num_key_value_heads": language.num_key_value_heads or language.num_heads,
        "max_position_embeddings": language.max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": language.rope_theta},
        "rms_norm_eps": language.rms_norm_eps,
        "tie_word_embeddings": language.tie_word_embeddings,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _vocab_size(spec: ModelSpec, tokenizer: Any) -> int:
    if spec.language.vocab_size is None:
        return len(tokenizer)
    if spec.language.vocab_size < len(tokenizer):
        raise ConfigError(
            f"language.vocab_size {spec.language.vocab_size} is smaller than the tokenizer's "
            f"{len(tokenizer)} tokens; raise it or leave it null"
        )
    return spec.language.vocab_size


def _build_mobilevlm(spec: ModelSpec, tokenizer: Any) -> torch.nn.Module:
    from alignkd.models.mobilevlm import MobileVLMConfig, MobileVLMForCausalLM

    config = MobileVLMConfig(
        **_llama_fields(spec.language, _vocab_size(spec, tokenizer), tokenizer),
        mm_vision_tower=_RANDOM_TOWER_NAME,
        mm_vision_config=_clip_vision_fields(spec.vision),
        mm_hidden_size=spec.vision.hidden_size,
        mm_projector_type=spec.projector.type,
        mm_projector_grid_size=spec.projector.grid_size,
        mm_vision_select_layer=spec.vision.select_layer,
        mm_vision_select_feature=spec.vision.select_feature,
        image_aspect_ratio=spec.image_aspect_ratio,
    )
    return MobileVLMForCausalLM(config)


def _build_llava(spec: ModelSpec, tokenizer: Any) -> torch.nn.Module:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    if spec.vision.select_feature != "patch":
        # LLaVA's "full" strategy keeps the CLS token, which is this spec's "cls_patch".
        strategy = "full"
    else:
        strategy = "default"
    vision_config = CLIPVisionConfig(**_clip_vision_fields(spec.vision))
    text_config = LlamaConfig(**_llama_fields(spec.language, _vocab_size(spec, tokenizer), tokenizer))
    patches = (spec.vision.image_size // spec.vision.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER_TEXT),
        projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy,
        vision_feature_layer=spec.vision.select_layer,
        image_seq_length=patches if strategy == "default" else patches + 1,
        tie_word_embeddings=spec.language.tie_word_embeddings,
    )
    return LlavaForConditionalGeneration(config)


def init_model(spec: Mapping[str, Any] | ModelSpec, tokenizer: Any, *, seed: int = 0) -> LoadedVLM:
    """Build a randomly initialised VLM described by `spec` (see `ModelSpec`).

    The tokenizer is copied, never changed in place. For LLaVA the copy gets the `<image>`
    token that transformers' LLaVA processor expects, and the vocabulary grows to fit it.
    The image processor is CLIP preprocessing at the vision tower's image size. The same
    spec, tokenizer and seed give the same weights.
    """
    if isinstance(spec, ModelSpec):
        spec.validate()
    else:
        spec = from_mapping(ModelSpec, spec)

    tokenizer = copy.deepcopy(tokenizer)
    if spec.family == "llava" and IMAGE_PLACEHOLDER_TEXT not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER_TEXT]})

    torch.manual_seed(seed)
    model = _build_mobilevlm(spec, tokenizer) if spec.family == "mobilevlm" else _build_llava(spec, tokenizer)
    model.eval()

    adapter = get_vlm_adapter(model)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    logger.info(
        "initialised a %s model with %d parameters and %d vision tokens per image",
        spec.family,
        parameters,
        adapter.num_vision_tokens,
    )
    image_processor = default_image_processor(spec.vision.image_size)
    return LoadedVLM(model=model, tokenizer=tokenizer, image_processor=image_processor, family=spec.family)
