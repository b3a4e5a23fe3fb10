"""Normalisation layers passed around as ``norm_layer(num_channels) -> nn.Module`` callables."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers (for external weights).

    Loads a ``BatchNorm2d`` state dict (``num_batches_tracked`` is accepted and dropped).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def group_norm(num_channels: int, num_groups: int = 32, min_group_channels: int = 1) -> nn.GroupNorm:
    """GroupNorm with ``gcd(num_groups, num_channels // min_group_channels)`` groups [ours].

    Equals ``num_groups`` for every layer of the full-width model (docs/model.md: GroupNorm(32) in the
    backbone, FPN and head; the root stem's 32-channel convs get one channel per group); narrow demo
    layers get fewer groups so they build.
    """
    return nn.GroupNorm(math.gcd(num_groups, max(num_channels // min_group_channels, 1)), num_channels)


NECK_MIN_GROUP_CHANNELS = 2
"""Neck and head groups hold at least 2 channels [ours]: C7 / P7 can be 1×1 maps at small inputs, where a
one-channel group normalises every value to 0. (At full width, 256 channels, they have 32 groups anyway.)"""


def make_norm_layers(norm: str, gn_groups: int) -> tuple[NormLayer, NormLayer | None]:
    """(backbone norm, neck/head norm or None) for ``ModelConfig.norm``.

    "gn": GroupNorm in both; "bn": BatchNorm2d in both (converted to SyncBatchNorm by the trainer);
    "frozen_bn": FrozenBatchNorm2d in the backbone and no norm in the neck and heads [ours].
    """
    if norm == "gn":
        return (partial(group_norm, num_groups=gn_groups),
                partial(group_norm, num_groups=gn_groups, min_group_channels=NECK_MIN_GROUP_CHANNELS))
    if norm == "bn":
        return nn.BatchNorm2d, nn.BatchNorm2d
    if norm == "frozen_bn":
        return FrozenBatchNorm2d, None
    raise ValueError(f"norm must be 'gn', 'bn' or 'frozen_bn', got {norm!r}")


def conv_norm_relu(
    in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], norm_layer: NormLayer | None,
    stride: int = 1, relu: bool = True,
) -> nn.Sequential:
    """Conv (same padding) → optional norm → optional ReLU. The conv has a bias only without a norm."""
    k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, k, stride=stride, padding=(k[0] // 2, k[1] // 2), bias=norm_layer is None)
    ]
    if norm_layer is not None:
        layers.append(norm_layer(out_channels))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)
