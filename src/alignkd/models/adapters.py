"""Per-family adapters: what `forward_vlm`, the probe and the trainer need from each VLM.

An adapter exposes one model's parts under common names (vision encoding, input embeddings,
decoder, LM head, layer-0 attention module) and its sizes. It keeps references only, so
creating one is cheap and changes nothing in the model.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from alignkd.errors import ModelError
from alignkd.models.mobilevlm import MobileVLMForCausalLM
from alignkd.models.vision import clip_hidden_state, num_patch_features, select_vision_features

Family = Literal["mobilevlm", "llava"]

# Vision towers that LLaVA can use here, with the number of tokens they add besides patches
# (CLIP's CLS token).
LLAVA_TOWER_EXTRA_TOKENS = {"clip_vision_model": 1, "siglip_vision_model": 0}


class VLMAdapter:
    """The parts of one VLM under family-independent names.

    Attributes:
        model: the wrapped transformers model.
        family: "mobilevlm" or "llava".
        vision_tower: the vision encoder (frozen in Align-KD training).
        projector: the vision-to-LM projector (trained with its own learning rate).
        language_model: a container over the decoder and the LM head (it shares their
            parameters and is not itself a submodule of `model`), for optimizer groups.
        decoder: the base LM (for example LlamaModel), called with `inputs_embeds`.
        lm_head: the output projection to the vocabulary.
        num_vision_tokens: vision tokens per image (the projector's output count).
        hidden_size: width of the LM, and so of the vision tokens.
        num_attention_heads: query heads of the first decoder layer.
        vocab_size: rows of the LM head.
        projector_type: the projector's type name (LLaVA's is always "mlp2x_gelu").
        image_size: side of the square images the vision tower takes, in pixels.
        image_aspect_ratio: how images are made square before resizing ("pad" or as configured).
    """

    family: Family
    vision_tower: nn.Module
    projector: nn.Module
    language_model: nn.Module
    decoder: nn.Module
    lm_head: nn.Module
    num_vision_tokens: int
    hidden_size: int
    num_attention_heads: int
    vocab_size: int
    projector_type: str
    image_size: int
    image_aspect_ratio: str

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return vision tokens [images, num_vision_tokens, hidden_size] of pixel_values [images, 3, H, W]."""
        raise NotImplementedError

    @property
    def input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def layer0_attention(self) -> nn.Module:
        """The self-attention module of the first decoder layer."""
        return self.decoder.layers[0].self_attn


class MobileVLMAdapter(VLMAdapter):
    """Adapter over `MobileVLMForCausalLM`."""

    def __init__(self, model: MobileVLMForCausalLM) -> None:
        super().__init__(model)
        config = model.config
        self.family = "mobilevlm"
        self.decoder = model.model
        self.lm_head = model.lm_head
        self.vision_tower = model.model.vision_tower
        self.projector = model.model.mm_projector
        self.language_model = nn.ModuleDict(
            {
                "embed_tokens": model.model.embed_tokens,
                "layers": model.model.layers,
                "norm": model.model.norm,
                "lm_head": model.lm_head,
            }
        )
        self.num_vision_tokens = model.num_vision_tokens
        self.hidden_size = config.hidden_size
        self.num_attention_heads = config.num_attention_heads
        self.vocab_size = config.vocab_size
        self.projector_type = config.mm_projector_type
        self.image_size = self.vision_tower.config.image_size
        self.image_aspect_ratio = config.image_aspect_ratio

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_images(pixel_values)


class LlavaAdapter(VLMAdapter):
    """Adapter over transformers' `LlavaForConditionalGeneration` (LLaVA-1.5 and alike)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        config = model.config
        text_config = config.text_config
        vision_config = config.vision_config

        extra_tokens = LLAVA_TOWER_EXTRA_TOKENS.get(vision_config.model_type)
        if extra_tokens is None:
            supported = ", ".join(sorted(LLAVA_TOWER_EXTRA_TOKENS))
            raise ModelError(
                f"LLaVA vision tower type {vision_config.model_type!r} is not supported; expected one of {supported}"
            )
        if config.vision_feature_select_strategy not in ("default", "full"):
            raise ModelError(
                f"vision_feature_select_strategy {config.vision_feature_select_strategy!r} is not supported; "
                "expected 'default' or 'full'"
            )

        self.family = "llava"
        self.decoder = model.model.language_model
        self.lm_head = model.lm_head
        self.vision_tower = model.model.vision_tower
        self.projector = model.model.multi_modal_projector
        self.language_model = nn.ModuleDict({"decoder": self.decoder, "lm_head": self.lm_head})

        # "default" drops the first token, which is CLIP's CLS token.
        self._drop_first = config.vision_feature_select_strategy == "default"
        patches = num_patch_features(vision_config.image_size, vision_config.patch_size, keep_cls=False)
        self.num_vision_tokens = patches + extra_tokens - (1 if self._drop_first else 0)
        self.hidden_size = text_config.hidden_size
        self.num_attention_heads = text_config.num_attention_heads
        self.vocab_size = text_config.vocab_size
        self.projector_type = "mlp2x_gelu"
        self.image_size = vision_config.image_size
        self.image_aspect_ratio = getattr(config, "image_aspect_ratio", "pad")

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        from transformers import CLIPVisionModel

        select_layer = self.model.config.vision_feature_layer
        trainable = any(parameter.requires_grad for parameter in self.vision_tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            if isinstance(self.vision_tower, CLIPVisionModel) and isinstance(select_layer, int):
                features = clip_hidden_state(self.vision_tower, pixel_values, select_layer)
                if self._drop_first:
                    features = features[:, 1:]
            else:
                features = select_vision_features(self.vision_tower, pixel_values, select_layer, self._drop_first)
        projector_dtype = next(self.projector.parameters()).dtype
        return self.projector(features.to(projector_dtype))


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the model inside DistributedDataParallel, DeepSpeed or compile wrappers."""
    from transformers import PreTrainedModel

    while not isinstance(model, PreTrainedModel):
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            break
    return model


def get_vlm_adapter(model: nn.Module) -> VLMAdapter:
    """Return the adapter of a MobileVLM or LLaVA model (wrappers such as DDP are unwrapped).

    Raises ModelError for any other module, for example a wrapper that contains a teacher and a
    student. Pass the student itself.
    """
    from transformers import LlavaForConditionalGeneration

    inner = unwrap_model(model)
    if isinstance(inner, MobileVLMForCausalLM):
        return MobileVLMAdapter(inner)
    if isinstance(inner, LlavaForConditionalGeneration):
        return LlavaAdapter(inner)
    raise ModelError(
        f"expected a MobileVLMForCausalLM or LlavaForConditionalGeneration, got {type(inner).__name__}; "
        "pass the VLM itself (for example the student, not a module that contains teacher and student)"
    )
