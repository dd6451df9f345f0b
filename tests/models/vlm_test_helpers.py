"""Tiny VLMs for the model-layer tests.

Sizes: the CLIP tower has width 32 and 2 layers, and reads 32 x 32 images in 8-pixel
patches (a 4 x 4 grid of 16 patch features). The LLaMA decoder has width 32, 2 layers, 4
query heads and 2 key/value heads. Projectors give 4 vision tokens (ldpnetv2 pooled to 2 x 2,
ldpnet with stride 2) or 16 (mlp2x_gelu, linear).
"""

from __future__ import annotations

from typing import Any

import torch

IMAGE_SIZE = 32
PATCH_SIZE = 8
GRID_SIZE = 2


def tiny_spec(
    family: str = "mobilevlm",
    projector: str = "ldpnetv2",
    *,
    tie: bool = False,
    num_layers: int = 2,
    select_feature: str = "patch",
) -> dict[str, Any]:
    return {
        "family": family,
        "vision": {
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 2,
            "patch_size": PATCH_SIZE,
            "image_size": IMAGE_SIZE,
            "select_feature": select_feature,
        },
        "projector": {"type": projector, "grid_size": GRID_SIZE},
        "language": {
            "hidden_size": 32,
            "num_layers": num_layers,
            "num_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 64,
            "tie_word_embeddings": tie,
        },
    }


def sharpen(model: torch.nn.Module, std: float = 0.5, seed: int = 0) -> None:
    """Redraw weight matrices with a large std so that random models make clear, varied choices."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def random_images(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
