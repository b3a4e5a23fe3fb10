"""Receptive Field Enhancement (SRN §3.4) [code: ``RFE`` in ``srn/model/resnet_srn.py``].

Four parallel branches, each 1×1 (C → C/4) + ReLU → an asymmetric conv (1×5, 5×1, 1×3 or 3×1) + ReLU
→ 1×1 + ReLU; the four outputs are concatenated (C), mixed by a 1×1 conv + ReLU and added to the input.
Reason: many faces have aspect ratios far from 1, so rectangular receptive fields help.
No normalisation inside, as in the code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

BRANCH_KERNELS = ((1, 5), (5, 1), (1, 3), (3, 1))


class RFE(nn.Module):
    """Tensor[B, C, H, W] → Tensor[B, C, H, W]; ``channels`` must be a multiple of 4."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"RFE channels must be a multiple of 4, got {channels}")
        inter = channels // 4
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, inter, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(inter, inter, k, padding=(k[0] // 2, k[1] // 2)),
                nn.ReLU(inplace=True),
                nn.Conv2d(inter, inter, 1),
                nn.ReLU(inplace=True),
            )
            for k in BRANCH_KERNELS
        )
        self.fuse = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.cat([branch(x) for branch in self.branches], dim=1)
        return self.fuse(out) + x
