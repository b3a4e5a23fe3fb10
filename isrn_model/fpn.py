"""The SRN neck: C6/C7 on top of the backbone, the first-step inputs C2–C7 and the FPN P2–P7.

Layout as the released SRN code (``srn/model/resnet_srn.py``) [code]:

* C6 = 3×3/2 conv on C5 (C5 channels → half), C7 = 3×3/2 conv on C6 (→ ``channels``); no activation
  between them, as in the code.
* First step inputs: each of C2–C7 reduced to ``channels`` by its own 1×1 conv.
* FPN: 1×1 laterals on C2–C5; top-down bilinear up-sampling (``align_corners=True`` [code]) and
  addition; a 3×3 conv on each merged map → P2–P5. P6 = 3×3/2 conv on the C5 lateral, P7 = 3×3/2 conv
  on P6.

Only the first-step inputs of the levels that have a first step (``first_levels``: STC's and STR's)
are built and computed [ours]: a level in neither would hold weights no loss reaches, and DDP stops on
those (it expects a gradient for every parameter), so ``str_levels: []`` could not train on 2 ranks.
Their places in the first-step list hold ``None``; state-dict keys keep their level's index.

With ``norm_layer`` (GN or BN) every conv here is followed by that norm [ours: ISRN uses GN "in the
backbone, FPN and head" but the exact placement is not published]. Weights normal(0, 0.01) [code].
"""

from __future__ import annotations

from collections.abc import Collection

import torch.nn.functional as F
from torch import Tensor, nn

from isrn_model.config import LEVELS
from isrn_model.norm import NormLayer, conv_norm_relu


class SRNNeck(nn.Module):
    """Maps [C2, C3, C4, C5] to (first-step features [C2r … C7r], second-step features [P2 … P7]).

    Every output has ``channels`` channels; level l has stride 2**l relative to the input image. A level
    not in ``first_levels`` has ``None`` in the first-step list.
    """

    def __init__(self, in_channels: list[int], channels: int, norm_layer: NormLayer | None,
                 first_levels: Collection[int] = LEVELS) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"SRNNeck expects channels of C2–C5 (4 values), got {in_channels!r}")
        c5 = in_channels[3]
        c6 = max(c5 // 2, 1)
        self.first_levels = tuple(sorted(first_levels))

        def conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
            return conv_norm_relu(cin, cout, k, norm_layer, stride=stride, relu=False)

        # C6 feeds C7; each is built only when a first step reads it.
        self.c6 = conv(c5, c6, 3, stride=2) if {6, 7} & set(first_levels) else None
        self.c7 = conv(c6, channels, 3, stride=2) if 7 in first_levels else None
        self.reduce = nn.ModuleList(conv(c, channels, 1) if level in first_levels else nn.Identity()
                                    for level, c in zip(LEVELS, [*in_channels, c6, channels]))
        self.lateral = nn.ModuleList(conv(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(conv(channels, channels, 3) for _ in in_channels)
        self.p6 = conv(channels, channels, 3, stride=2)
        self.p7 = conv(channels, channels, 3, stride=2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor | None], list[Tensor]]:
        c6 = self.c6(feats[3]) if self.c6 is not None else None
        c7 = self.c7(c6) if self.c7 is not None else None
        first = [reduce(c) if level in self.first_levels else None
                 for level, reduce, c in zip(LEVELS, self.reduce, [*feats, c6, c7])]

        laterals = [lateral(c) for lateral, c in zip(self.lateral, feats)]
        merged = [laterals[3]]
        for lat in reversed(laterals[:3]):
            up = F.interpolate(merged[0], size=lat.shape[-2:], mode="bilinear", align_corners=True)
            merged.insert(0, up + lat)
        second = [out(m) for out, m in zip(self.output, merged)]
        p6 = self.p6(laterals[3])
        second += [p6, self.p7(p6)]
        return first, second
