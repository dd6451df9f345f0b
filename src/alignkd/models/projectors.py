"""Vision projectors of MobileVLM and LLaVA: patch features to vision tokens in the LM's width.

Every projector maps CLIP patch features [images, patches, mm_hidden] to vision tokens
[images, tokens, hidden]. Module and parameter names follow the MobileVLM repository
(mobilevlm/model/vision_projector.py), so that `state_dict()` keys match MobileVLM checkpoints
under the prefix `model.mm_projector.`:

- `linear`: one Linear (`weight`, `bias`).
- `mlp{N}x_gelu` (LLaVA-1.5 uses N = 2): Linear, then N - 1 times GELU and Linear
  (`0.*`, `2.*`, ...).
- `ldpnetv2` (MobileVLM V2): `mlp.mlp.{0,2}.*` (Linear, GELU, Linear), adaptive average pooling
  of the square token grid to `grid_size` x `grid_size`, then `peg.peg.0.*`, a 3x3 depthwise
  convolution added as a residual.
- `ldpnet` (MobileVLM V1): `model.mlp.{1,3}.*` (Linear, GELU, Linear), then two MobileNetV3
  inverted-residual blocks `model.mb_block.{1,2}.block.*`. Each block is a depthwise 3x3
  convolution, LayerNorm over channels, Hardswish, squeeze-excitation, a pointwise
  convolution and LayerNorm. The second block has stride 2, so a grid of side g becomes
  ceil(g / 2).
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn import functional as F

from alignkd.errors import ModelError

PROJECTOR_TYPES = ("ldpnetv2", "ldpnet", "mlp2x_gelu", "linear")
"""Projector types with a test in this package; any `mlp{N}x_gelu` is accepted too."""

_MLP_GELU_PATTERN = re.compile(r"^mlp(\d+)x_gelu$")

# MobileNetV3 rounds channel counts to multiples of this value (torchvision `_make_divisible`).
_CHANNEL_DIVISOR = 8

# Squeeze-excitation in MobileNetV3 squeezes the channels by this factor before rounding.
_SQUEEZE_FACTOR = 4

# LayerNorm epsilon of timm's LayerNormAct2d, which MobileVLM's LDP blocks use.
_LAYER_NORM_2D_EPS = 1e-5


def _round_channels(value: float, divisor: int = _CHANNEL_DIVISOR) -> int:
    """Round `value` to a multiple of `divisor` as MobileNetV3 does, never dropping more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _grid_side(num_tokens: int, what: str) -> int:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ModelError(
            f"{what} needs a square grid of patch features, got {num_tokens} tokens; "
            "use mm_vision_select_feature 'patch' (without the CLS token) and a square image"
        )
    return side


def _tokens_to_grid(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """[batch, side * side, channels] -> [batch, channels, side, side]."""
    batch, _, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, channels, side, side)


def _grid_to_tokens(grid: torch.Tensor) -> torch.Tensor:
    """[batch, channels, height, width] -> [batch, height * width, channels]."""
    return grid.flatten(2).transpose(1, 2)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of a [batch, channels, height, width] tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class SqueezeExcitation(nn.Module):
    """Channel gating of MobileNetV3: mean over space, 1x1 conv, ReLU, 1x1 conv, hard sigmoid."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = self.fc2(F.relu(self.fc1(scale)))
        return F.hardsigmoid(scale) * x


class ConvNormActivation(nn.Sequential):
    """Conv2d without bias (index 0), LayerNorm2d (index 1) and an optional Hardswish (index 2)."""

    def __init__(self, channels: int, kernel_size: int, stride: int, groups: int, activation: bool) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                channels,
                channels,
                kernel_size,
                stride=stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            LayerNorm2d(channels, eps=_LAYER_NORM_2D_EPS),
        ]
        if activation:
            layers.append(nn.Hardswish())
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV3 block with equal input, expanded and output widths (so no expansion conv).

    The residual is added only when the stride is 1, as in MobileNetV3.
    """

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        depthwise_kernel = 3
        self.use_residual = stride == 1
        squeeze_channels = _round_channels(channels // _SQUEEZE_FACTOR)
        self.block = nn.Sequential(
            ConvNormActivation(channels, depthwise_kernel, stride, groups=channels, activation=True),
            SqueezeExcitation(channels, squeeze_channels),
            ConvNormActivation(channels, 1, 1, groups=1, activation=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_residual:
            result = result + x
        return result


class LDPBlock(nn.Module):
    """The MobileVLM V1 lightweight downsample projector (index 0 of each Sequential is Identity)."""

    def __init__(self, vision_width: int, hidden_size: int) -> None:
        super().__init__()
        if _round_channels(hidden_size) != hidden_size:
            raise ModelError(
                f"projector 'ldpnet' needs hidden_size to be a multiple of {_CHANNEL_DIVISOR} "
                f"(MobileNetV3 channel rounding), got {hidden_size}; choose another hidden_size or projector"
            )
        self.mlp = nn.Sequential(
            nn.Identity(), nn.Linear(vision_width, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )
        self.mb_block = nn.Sequential(
            nn.Identity(),
            InvertedResidual(hidden_size, stride=1),
            InvertedResidual(hidden_size, stride=2),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        side = _grid_side(features.shape[1], "projector 'ldpnet'")
        grid = _tokens_to_grid(self.mlp(features), side)
        return _grid_to_tokens(self.mb_block(grid))


class LDPNetProjector(nn.Module):
    """MobileVLM V1 projector: [images, g * g, vision_width] -> [images, ceil(g / 2) ** 2, hidden]."""

    def __init__(self, vision_width: int, hidden_size: int) -> None:
        super().__init__()
        self.model = LDPBlock(vision_width, hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model(features)


class _FeatureMLP(nn.Module):
    def __init__(self, vision_width: int, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(vision_width, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class _PositionalConv(nn.Module):
    """Depthwise 3x3 convolution over the token grid, added as a residual (MobileVLM's PEG)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        kernel_size = 3
        self.peg = nn.Sequential(
            nn.Conv2d(hidden_size, hidden_size, kernel_size, 1, (kernel_size - 1) // 2, bias=True, groups=hidden_size)
        )

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.peg(grid) + grid


class LDPNetV2Projector(nn.Module):
    """MobileVLM V2 projector: [images, g * g, vision_width] -> [images, grid_size ** 2, hidden]."""

    def __init__(self, vision_width: int, hidden_size: int, grid_size: int) -> None:
        super().__init__()
        if grid_size < 1:
            raise ModelError(f"projector 'ldpnetv2' needs mm_projector_grid_size >= 1, got {grid_size}")
        self.grid_size = grid_size
        self.mlp = _FeatureMLP(vision_width, hidden_size)
        self.peg = _PositionalConv(hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        side = _grid_side(features.shape[1], "projector 'ldpnetv2'")
        grid = _tokens_to_grid(self.mlp(features), side)
        grid = F.adaptive_avg_pool2d(grid, self.grid_size)
        return _grid_to_tokens(self.peg(grid))


def mlp_depth(projector_type: str) -> int | None:
    """Return N for `mlp{N}x_gelu`, or None for any other type."""
    match = _MLP_GELU_PATTERN.match(projector_type)
    return int(match.group(1)) if match else None


def check_projector_type(projector_type: str) -> None:
    """Raise ModelError unless `projector_type` names a projector this module builds."""
    if projector_type in PROJECTOR_TYPES or mlp_depth(projector_type):
        return
    raise ModelError(
        f"unknown projector type {projector_type!r}; expected one of {', '.join(PROJECTOR_TYPES)} or mlp<N>x_gelu"
    )


def build_projector(projector_type: str, vision_width: int, hidden_size: int, grid_size: int) -> nn.Module:
    """Build the projector named `projector_type`; `grid_size` is used by `ldpnetv2` only."""
    check_projector_type(projector_type)
    if projector_type == "linear":
        return nn.Linear(vision_width, hidden_size)
    if projector_type == "ldpnetv2":
        return LDPNetV2Projector(vision_width, hidden_size, grid_size)
    if projector_type == "ldpnet":
        return LDPNetProjector(vision_width, hidden_size)

    depth = mlp_depth(projector_type)
    layers: list[nn.Module] = [nn.Linear(vision_width, hidden_size)]
    for _ in range(depth - 1):
        layers.append(nn.GELU())
        layers.append(nn.Linear(hidden_size, hidden_size))
    return nn.Sequential(*layers)


def projector_output_tokens(projector_type: str, num_features: int, grid_size: int) -> int:
    """Number of vision tokens that `projector_type` makes from `num_features` patch features."""
    check_projector_type(projector_type)
    if projector_type == "ldpnetv2":
        _grid_side(num_features, "projector 'ldpnetv2'")
        return grid_size * grid_size
    if projector_type == "ldpnet":
        side = _grid_side(num_features, "projector 'ldpnet'")
        # A stride-2 3x3 convolution with padding 1 maps a side of g to ceil(g / 2).
        pooled_side = (side + 1) // 2
        return pooled_side * pooled_side
    return num_features
