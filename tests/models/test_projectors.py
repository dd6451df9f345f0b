"""Projectors: MobileVLM key names and shapes, token counts, and outputs against hand computations."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from alignkd.errors import ModelError
from alignkd.models.projectors import (
    _round_channels,
    build_projector,
    check_projector_type,
    projector_output_tokens,
)

VISION_WIDTH = 24
HIDDEN = 16


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}


def test_ldpnetv2_keys_and_shapes():
    projector = build_projector("ldpnetv2", VISION_WIDTH, HIDDEN, grid_size=3)
    assert shapes(projector) == {
        "mlp.mlp.0.weight": (HIDDEN, VISION_WIDTH),
        "mlp.mlp.0.bias": (HIDDEN,),
        "mlp.mlp.2.weight": (HIDDEN, HIDDEN),
        "mlp.mlp.2.bias": (HIDDEN,),
        "peg.peg.0.weight": (HIDDEN, 1, 3, 3),
        "peg.peg.0.bias": (HIDDEN,),
    }


def test_ldpnet_keys_and_shapes():
    projector = build_projector("ldpnet", VISION_WIDTH, HIDDEN, grid_size=12)
    # Squeeze-excitation width: 16 // 4 = 4, rounded up to the MobileNetV3 minimum of 8.
    squeeze = 8
    expected = {
        "model.mlp.1.weight": (HIDDEN, VISION_WIDTH),
        "model.mlp.1.bias": (HIDDEN,),
        "model.mlp.3.weight": (HIDDEN, HIDDEN),
        "model.mlp.3.bias": (HIDDEN,),
    }
    for block in (1, 2):
        prefix = f"model.mb_block.{block}.block"
        expected.update(
            {
                f"{prefix}.0.0.weight": (HIDDEN, 1, 3, 3),
                f"{prefix}.0.1.weight": (HIDDEN,),
                f"{prefix}.0.1.bias": (HIDDEN,),
                f"{prefix}.1.fc1.weight": (squeeze, HIDDEN, 1, 1),
                f"{prefix}.1.fc1.bias": (squeeze,),
                f"{prefix}.1.fc2.weight": (HIDDEN, squeeze, 1, 1),
                f"{prefix}.1.fc2.bias": (HIDDEN,),
                f"{prefix}.2.0.weight": (HIDDEN, HIDDEN, 1, 1),
                f"{prefix}.2.1.weight": (HIDDEN,),
                f"{prefix}.2.1.bias": (HIDDEN,),
            }
        )
    assert shapes(projector) == expected


def test_mlp_and_linear_keys():
    assert set(shapes(build_projector("mlp2x_gelu", VISION_WIDTH, HIDDEN, 12))) == {
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    }
    assert set(shapes(build_projector("mlp3x_gelu", VISION_WIDTH, HIDDEN, 12))) == {
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "4.weight",
        "4.bias",
    }
    assert shapes(build_projector("linear", VISION_WIDTH, HIDDEN, 12)) == {
        "weight": (HIDDEN, VISION_WIDTH),
        "bias": (HIDDEN,),
    }


@pytest.mark.parametrize(
    ("projector_type", "features", "grid_size", "tokens"),
    [
        ("ldpnetv2", 576, 12, 144),  # MobileVLM V2: 24 x 24 CLIP patches pooled to 12 x 12
        ("ldpnetv2", 16, 2, 4),
        ("ldpnet", 576, 12, 144),  # MobileVLM V1: stride 2 halves the 24 x 24 grid
        ("ldpnet", 25, 12, 9),  # odd side 5 becomes ceil(5 / 2) = 3
        ("mlp2x_gelu", 576, 12, 576),
        ("linear", 16, 12, 16),
    ],
)
def test_output_token_counts(projector_type, features, grid_size, tokens):
    assert projector_output_tokens(projector_type, features, grid_size) == tokens
    projector = build_projector(projector_type, VISION_WIDTH, HIDDEN, grid_size)
    with torch.no_grad():
        output = projector(torch.randn(2, features, VISION_WIDTH))
    assert output.shape == (2, tokens, HIDDEN)


def test_ldpnetv2_matches_block_average():
    projector = build_projector("ldpnetv2", VISION_WIDTH, HIDDEN, grid_size=2)
    with torch.no_grad():
        projector.peg.peg[0].weight.zero_()
        projector.peg.peg[0].bias.zero_()
    features = torch.randn(1, 16, VISION_WIDTH)

    with torch.no_grad():
        output = projector(features)
        # With the convolution zeroed only its residual remains: the 4 x 4 grid of MLP
        # outputs averaged over 2 x 2 blocks, in row-major order.
        grid = projector.mlp(features).reshape(4, 4, HIDDEN)
        expected = grid.reshape(2, 2, 2, 2, HIDDEN).mean(dim=(1, 3)).reshape(1, 4, HIDDEN)
    torch.testing.assert_close(output, expected)


def test_ldpnetv2_positional_conv_is_residual():
    projector = build_projector("ldpnetv2", VISION_WIDTH, HIDDEN, grid_size=2)
    features = torch.randn(1, 16, VISION_WIDTH)
    with torch.no_grad():
        pooled = F.adaptive_avg_pool2d(projector.mlp(features).transpose(1, 2).reshape(1, HIDDEN, 4, 4), 2)
        expected = (projector.peg.peg(pooled) + pooled).flatten(2).transpose(1, 2)
        output = projector(features)
    torch.testing.assert_close(output, expected)


@pytest.mark.parametrize(("value", "rounded"), [(4, 8), (36, 40), (512, 512), (2048, 2048), (12, 16)])
def test_channel_rounding_known_values(value, rounded):
    assert _round_channels(value) == rounded


def test_ldpnet_rejects_unrounded_width():
    with pytest.raises(ModelError, match="multiple of 8"):
        build_projector("ldpnet", VISION_WIDTH, 36, grid_size=12)


def test_non_square_features_rejected():
    projector = build_projector("ldpnetv2", VISION_WIDTH, HIDDEN, grid_size=2)
    with pytest.raises(ModelError, match="square grid"):
        projector(torch.randn(1, 17, VISION_WIDTH))
    with pytest.raises(ModelError, match="square grid"):
        projector_output_tokens("ldpnet", 17, 12)


def test_unknown_projector_type_rejected():
    with pytest.raises(ModelError, match="unknown projector type 'qformer'"):
        check_projector_type("qformer")
