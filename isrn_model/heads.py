"""The SRN head: a class subnet and a box subnet, each 3×3 conv + ReLU → RFE → 3×3 conv + ReLU → 1×1.

[code: ``cls_subnet`` / ``box_subnet`` in ``srn/model/resnet_srn.py``]. Weights normal(0, 0.01), class
bias −log((1 − π)/π) with π = 0.01 so every anchor starts at face probability 0.01 [code]. With a
``norm_layer`` the two 3×3 convs are followed by it (GN in ISRN [ours: placement not published]).

Outputs are flattened per level in (y, x, anchor) order, the order of :mod:`isrn_model.anchors`.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from isrn_model.norm import NormLayer, conv_norm_relu
from isrn_model.rfe import RFE

PRIOR_PROBABILITY = 0.01


def _subnet(in_channels: int, channels: int, norm_layer: NormLayer | None) -> nn.Sequential:
    return nn.Sequential(
        conv_norm_relu(in_channels, channels, 3, norm_layer),
        RFE(channels),
        conv_norm_relu(channels, channels, 3, norm_layer),
    )


class SRNHead(nn.Module):
    """Class and box predictions for a list of feature maps (the head is shared across levels).

    Args:
        in_channels: channels of every input level.
        channels: width of the subnets (RFE width).
        num_anchors: anchors per location (2 in SRN).
        norm_layer: norm after the subnets' 3×3 convs, or None.
    """

    def __init__(self, in_channels: int, channels: int, num_anchors: int, norm_layer: NormLayer | None) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.cls_subnet = _subnet(in_channels, channels, norm_layer)
        self.box_subnet = _subnet(in_channels, channels, norm_layer)
        self.cls_pred = nn.Conv2d(channels, num_anchors, 1)
        self.box_pred = nn.Conv2d(channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_pred.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def classify(self, feature: Tensor) -> Tensor:
        """Tensor[B, C, H, W] → face logits Tensor[B, H·W·A] in (y, x, anchor) order."""
        logits = self.cls_pred(self.cls_subnet(feature))
        return logits.permute(0, 2, 3, 1).reshape(logits.shape[0], -1)

    def regress(self, feature: Tensor) -> Tensor:
        """Tensor[B, C, H, W] → box deltas Tensor[B, H·W·A, 4] in (y, x, anchor) order."""
        deltas = self.box_pred(self.box_subnet(feature))
        return deltas.permute(0, 2, 3, 1).reshape(deltas.shape[0], -1, 4)
