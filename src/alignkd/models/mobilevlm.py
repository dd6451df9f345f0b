"""MobileVLM V1 and V2 on transformers: a LLaMA decoder with a CLIP vision tower and a projector.

The module tree mirrors MobileVLM's own classes, so `state_dict()` keys are the checkpoint keys:

    model.embed_tokens.*, model.layers.N.*, model.norm.*, lm_head.weight     (LLaMA)
    model.vision_tower.vision_tower.vision_model.*                             (CLIP vision model)
    model.mm_projector.*                                                       (see projectors.py)

transformers 5 names CLIPVisionModel's children without the `vision_model.` prefix that
transformers 4 (and so every MobileVLM checkpoint) used; `CLIPVisionModelHolder` restores it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel, LlamaConfig
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel

from alignkd.constants import IMAGE_PLACEHOLDER_ID
from alignkd.errors import ModelError
from alignkd.models.expansion import embed_multimodal
from alignkd.models.projectors import build_projector, check_projector_type, projector_output_tokens
from alignkd.models.vision import (
    VISION_SELECT_FEATURES,
    clip_config_to_dict,
    clip_hidden_state,
    num_patch_features,
    resolve_clip_vision_config,
)

logger = logging.getLogger(__name__)


@strict
class MobileVLMConfig(LlamaConfig):
    """A LLaMA config with MobileVLM's multimodal fields (model_type "mobilevlm").

    The fields below keep the names and meanings of MobileVLM's config.json, except the two
    marked as alignkd fields.
    """

    model_type = "mobilevlm"

    # Hub id or local folder of the CLIP vision model. Only its name and config are used: the
    # tower's weights are part of the checkpoint.
    mm_vision_tower: str | None = None
    # Vision tower family; only "clip" exists in MobileVLM.
    vision_tower_type: str = "clip"
    # Width of the features that enter the projector (the CLIP hidden size).
    mm_hidden_size: int | None = None
    # "ldpnetv2" (V2), "ldpnet" (V1), "mlp2x_gelu" or "linear"; MobileVLM's default is "linear".
    mm_projector_type: str = "linear"
    # Index into the CLIP hidden states (embeddings output first); -2 is the penultimate layer.
    mm_vision_select_layer: int = -2
    # "patch" drops the CLS token, "cls_patch" keeps it.
    mm_vision_select_feature: str = "patch"
    # "pad": pad images to a square with the processor's mean colour before resizing.
    image_aspect_ratio: str = "pad"
    # Image start/end marker tokens around the vision tokens (MobileVLM V1 option; not supported).
    mm_use_im_start_end: bool = False
    # Whether MobileVLM's own loader adds an `<im_patch>` token to the tokenizer (unused here).
    mm_use_im_patch_token: bool = False
    # alignkd field: side of the square grid that `ldpnetv2` pools to (MobileVLM fixes 12).
    mm_projector_grid_size: int = 12
    # alignkd field: the CLIP vision config, stored so that the folder loads without the tower's
    # own files. Filled in when the model is built.
    mm_vision_config: dict | None = None


# The class name that MobileVLM's code registers; config.json names it in `architectures`.
MOBILEVLM_ARCHITECTURE = "MobileLlamaForCausalLM"


def mobilevlm_config_to_dict(config: MobileVLMConfig, dtype: torch.dtype) -> dict[str, Any]:
    """Return config.json content in MobileVLM's format (transformers 4 LLaMA field names).

    transformers 5 writes `rope_parameters` and `dtype`; MobileVLM's code and the llama.cpp
    converter read `rope_theta`, `rope_scaling` and `torch_dtype`, so those are written instead.
    """
    data = config.to_dict()
    rope = dict(data.pop("rope_parameters", None) or {})
    data["rope_theta"] = rope.pop("rope_theta", None)
    rope_type = rope.get("rope_type", "default")
    data["rope_scaling"] = None if rope_type == "default" else rope
    data.pop("dtype", None)
    data["torch_dtype"] = str(dtype).removeprefix("torch.")
    data["architectures"] = [MOBILEVLM_ARCHITECTURE]
    data["model_type"] = MobileVLMConfig.model_type
    return data


def mobilevlm_config_from_dict(data: dict[str, Any], source: str) -> MobileVLMConfig:
    """Build a MobileVLMConfig from config.json content; raise ModelError naming `source`."""
    data = dict(data)

    # Build transformers 5's `rope_parameters` from the transformers 4 fields MobileVLM writes.
    theta = data.pop("rope_theta", None)
    scaling = data.pop("rope_scaling", None)
    if "rope_parameters" not in data and (theta is not None or scaling):
        parameters = dict(scaling or {})
        if "type" in parameters:
            parameters.setdefault("rope_type", parameters.pop("type"))
        parameters.setdefault("rope_type", "default")
        if theta is not None:
            parameters["rope_theta"] = theta
        data["rope_parameters"] = parameters

    try:
        return MobileVLMConfig.from_dict(data)
    except (StrictDataclassError, TypeError, ValueError) as error:
        raise ModelError(f"{source}: invalid MobileVLM config: {error}") from None


def resolve_vision_config(config: MobileVLMConfig, model_dir: str | None = None) -> CLIPVisionConfig:
    """Return the CLIP config of `config`'s tower and store it in `config.mm_vision_config`."""
    vision_config = resolve_clip_vision_config(config.mm_vision_tower, config.mm_vision_config, model_dir=model_dir)
    config.mm_vision_config = clip_config_to_dict(vision_config)
    return vision_config


def check_mobilevlm_config(config: MobileVLMConfig, vision_config: CLIPVisionConfig) -> None:
    """Raise ModelError for configs this implementation does not run."""
    if config.vision_tower_type != "clip":
        raise ModelError(f"vision_tower_type {config.vision_tower_type!r} is not supported; only 'clip' is")
    if config.mm_use_im_start_end:
        raise ModelError("mm_use_im_start_end = true (image start/end marker tokens) is not supported")
    if config.mm_vision_select_feature not in VISION_SELECT_FEATURES:
        raise ModelError(
            f"mm_vision_select_feature {config.mm_vision_select_feature!r} is not supported; "
            f"expected one of {', '.join(VISION_SELECT_FEATURES)}"
        )
    check_projector_type(config.mm_projector_type)

    layers = vision_config.num_hidden_layers
    if not -(layers + 1) <= config.mm_vision_select_layer <= layers:
        raise ModelError(
            f"mm_vision_select_layer {config.mm_vision_select_layer} is out of range for a vision tower "
            f"with {layers} layers ({layers + 1} hidden states)"
        )
    if config.mm_hidden_size is not None and config.mm_hidden_size != vision_config.hidden_size:
        raise ModelError(
            f"mm_hidden_size {config.mm_hidden_size} differs from the vision tower's hidden_size "
            f"{vision_config.hidden_size}"
        )


class CLIPVisionModelHolder(nn.Module):
    """Container of a CLIPVisionModel named `vision_model`, so that parameter keys read `vision_model.*`."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.vision_model = CLIPVisionModel(config)


class CLIPVisionTower(nn.Module):
    """The CLIP tower of MobileVLM: pixel_values [images, 3, H, W] -> features [images, P, width].

    The tower runs without autograd when none of its parameters requires grad (it is frozen in
    Align-KD training), so no activations are kept for it.
    """

    def __init__(self, config: CLIPVisionConfig, select_layer: int, select_feature: str) -> None:
        super().__init__()
        self.vision_tower = CLIPVisionModelHolder(config)
        self.select_layer = select_layer
        self.select_feature = select_feature

    @property
    def config(self) -> CLIPVisionConfig:
        return self.vision_tower.vision_model.config

    @property
    def num_features(self) -> int:
        return num_patch_features(
            self.config.image_size, self.config.patch_size, keep_cls=self.select_feature == "cls_patch"
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        trainable = any(parameter.requires_grad for parameter in self.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            features = clip_hidden_state(self.vision_tower.vision_model, pixel_values, self.select_layer)
        if self.select_feature == "patch":
            features = features[:, 1:]
        return features


class MobileVLMModel(LlamaModel):
    """LlamaModel plus `vision_tower` and `mm_projector`; its forward is LlamaModel's."""

    config_class = MobileVLMConfig

    def __init__(self, config: MobileVLMConfig) -> None:
        super().__init__(config)
        vision_config = resolve_vision_config(config)
        check_mobilevlm_config(config, vision_config)
        if config.mm_hidden_size is None:
            config.mm_hidden_size = vision_config.hidden_size

        self.vision_tower = CLIPVisionTower(
            vision_config, config.mm_vision_select_layer, config.mm_vision_select_feature
        )
        self.mm_projector = build_projector(
            config.mm_projector_type, config.mm_hidden_size, config.hidden_size, config.mm_projector_grid_size
        )


class MobileVLMForCausalLM(LlamaForCausalLM):
    """MobileVLM as a transformers causal LM (MobileLlamaForCausalLM in MobileVLM's code).

    `forward` accepts unexpanded `input_ids` with IMAGE_PLACEHOLDER_ID and `pixel_values` (or
    MobileVLM's name `images`) and returns the usual CausalLMOutputWithPast with the loss and
    the logits of the expanded sequence. Use `alignkd.models.generation.greedy_generate` to
    generate: transformers' `generate` does not know that the placeholder grows the sequence.
    """

    config_class = MobileVLMConfig

    def __init__(self, config: MobileVLMConfig) -> None:
        LlamaPreTrainedModel.__init__(self, config)
        self.model = MobileVLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @property
    def num_vision_tokens(self) -> int:
        config = self.config
        return projector_output_tokens(
            config.mm_projector_type, self.model.vision_tower.num_features, config.mm_projector_grid_size
        )

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return vision tokens [images, num_vision_tokens, hidden] of pixel_values [images, 3, H, W]."""
        features = self.model.vision_tower(pixel_values)
        projector_dtype = next(self.model.mm_projector.parameters()).dtype
        return self.model.mm_projector(features.to(projector_dtype))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        pixel_values: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if pixel_values is None:
            pixel_values = images

        has_placeholder = input_ids is not None and bool((input_ids == IMAGE_PLACEHOLDER_ID).any())
        if inputs_embeds is None and (has_placeholder or pixel_values is not None):
            if cache is not None and cache.get_seq_length() > 0:
                raise ModelError("image placeholders can be expanded only in the first forward of a sequence")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            expanded = embed_multimodal(
                input_ids,
                attention_mask,
                labels,
                pixel_values,
                image_mask,
                encode_images=self.encode_images,
                embed_tokens=self.get_input_embeddings(),
                num_vision_tokens=self.num_vision_tokens,
                hidden_size=self.config.hidden_size,
            )
            input_ids = None
            inputs_embeds = expanded.inputs_embeds
            attention_mask = expanded.attention_mask
            position_ids = expanded.position_ids
            labels = expanded.labels

        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )


# Registering lets AutoConfig, AutoTokenizer and AutoModelForCausalLM read MobileVLM folders.
# exist_ok tolerates MobileVLM's own code having registered the same name in this process.
AutoConfig.register(MobileVLMConfig.model_type, MobileVLMConfig, exist_ok=True)
AutoModelForCausalLM.register(MobileVLMConfig, MobileVLMForCausalLM, exist_ok=True)
