"""ResNet-18/34/50/101 backbone returning C2–C5 (strides 4, 8, 16, 32), with an injected norm layer.

Module and parameter names follow torchvision's ResNet (``layer1.0.conv1``, ``downsample.0`` …), with
the input module under ``stem``, so torchvision-format weights load with a small key remap.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from isrn_model.norm import NormLayer

logger = logging.getLogger(__name__)

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv3x3(width, cout)
        self.bn2 = norm_layer(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, stride, norm_layer)

    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided, as torchvision's v1.5) → 1×1 ×4 with a residual connection (ResNet-50/101)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = norm_layer(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, stride, norm_layer)

    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(cin: int, cout: int, stride: int, norm_layer: NormLayer) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), norm_layer(cout))


class StandardStem(nn.Module):
    """ResNet input module: 7×7/2 conv → norm → ReLU → 3×3/2 max-pool (output stride 4)."""

    stride = 4

    def __init__(self, width: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


class RootStem(nn.Module):
    """ISRN input module, our reconstruction [ours] after ScratchDet's Root-ResNet.

    The wide 7×7/2 conv is split into three 3×3 convs (the first with half the channels, to stay
    cheap) and the max-pool is dropped: output stride 2, so the only further down-sampling before C2
    is the learned stride-2 first block of ``layer1`` (no early information loss [paper: ISRN §3]).
    """

    stride = 2

    def __init__(self, width: int, norm_layer: NormLayer) -> None:
        super().__init__()
        half = width // 2
        self.conv1 = _conv3x3(3, half, stride=2)
        self.bn1 = norm_layer(half)
        self.conv2 = _conv3x3(half, half)
        self.bn2 = norm_layer(half)
        self.conv3 = _conv3x3(half, width)
        self.bn3 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.relu(self.bn3(self.conv3(x)))


class ResNet(nn.Module):
    """ResNet trunk returning [C2, C3, C4, C5]; ``out_channels`` lists their channel counts.

    Args:
        depth: 18, 34, 50 or 101.
        norm_layer: ``norm_layer(channels) -> nn.Module`` used after every conv.
        stem: "root" (ISRN, [ours]) or "standard" (7×7 + max-pool).
        base_width: channels of the first stage (64 in ResNet; smaller for CPU demos [ours]).
        zero_init_residual: zero the last norm's weight in each block (block starts as identity).
    """

    def __init__(
        self, depth: int, norm_layer: NormLayer, *, stem: str = "root", base_width: int = 64,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth!r}")
        if stem not in ("root", "standard"):
            raise ValueError(f"ResNet stem must be 'root' or 'standard', got {stem!r}")
        block = BasicBlock if depth < 50 else Bottleneck
        self.stem = RootStem(base_width, norm_layer) if stem == "root" else StandardStem(base_width, norm_layer)
        # The root stem stops at stride 2, so layer1 down-samples to reach C2's stride 4.
        first_stride = 4 // self.stem.stride
        cin = base_width
        self.out_channels: list[int] = []
        for i, n_blocks in enumerate(STAGE_BLOCKS[depth]):
            width = base_width * 2**i
            stride = first_stride if i == 0 else 2
            blocks = []
            for j in range(n_blocks):
                blocks.append(block(cin, width, stride if j == 0 else 1, norm_layer))
                cin = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels.append(cin)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # He init for training from scratch (ISRN trains from scratch with GN [paper]).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    norm = m.last_norm()
                    if isinstance(norm, (nn.BatchNorm2d, nn.GroupNorm)):
                        nn.init.zeros_(norm.weight)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]

    def load_external(self, path: str) -> None:
        """Load a local state dict (ours or torchvision's key names); never downloads.

        Raises FileNotFoundError naming the path, or ValueError when no tensor matches.
        """
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"pretrained_path {path!r} is not a file")
        state = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        remapped = {}
        for key, value in state.items():
            if key.startswith(("conv1.", "bn1.")):  # torchvision's stem sits at the top level
                key = "stem." + key
            remapped[key] = value
        own = self.state_dict()
        usable = {k: v for k, v in remapped.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise ValueError(f"pretrained_path {path!r}: no tensor matches the backbone's names and shapes")
        missing = sorted(set(own) - set(usable))
        skipped = sorted(set(remapped) - set(usable))
        self.load_state_dict(usable, strict=False)
        logger.info("loaded %d backbone tensors from %s; %d not in file, %d in file skipped",
                    len(usable), path, len(missing), len(skipped))
