"""One builder: turns the config into the ISRN modules.

    from isrn_model.builder import build_isrn
    model = build_isrn(ModelConfig(depth=18, base_width=16, fpn_channels=64, head_channels=64))
"""

from __future__ import annotations

from isrn_model.anchors import NUM_ANCHORS
from isrn_model.backbone import ResNet
from isrn_model.config import InferenceConfig, LossConfig, ModelConfig
from isrn_model.detector import ISRN
from isrn_model.fpn import SRNNeck
from isrn_model.heads import SRNHead
from isrn_model.norm import make_norm_layers


def build_isrn(
    cfg: ModelConfig, *, loss: LossConfig | None = None, inference: InferenceConfig | None = None
) -> ISRN:
    """Build an ISRN detector (He-initialised, or with ``cfg.pretrained_path`` loaded into the backbone).

    Args:
        cfg: the network shape.
        loss: training targets and losses (defaults: ``LossConfig()``).
        inference: post-processing (defaults: ``InferenceConfig()``, the released code's values).
    """
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build_isrn expects a ModelConfig, got {type(cfg).__name__}")
    backbone_norm, neck_norm = make_norm_layers(cfg.norm, cfg.gn_groups)
    backbone = ResNet(cfg.depth, backbone_norm, stem=cfg.stem, base_width=cfg.base_width,
                      zero_init_residual=cfg.zero_init_residual)
    if cfg.pretrained_path is not None:
        backbone.load_external(cfg.pretrained_path)
    neck = SRNNeck(backbone.out_channels, cfg.fpn_channels, neck_norm,
                   first_levels=set(cfg.stc_levels) | set(cfg.str_levels))
    n_heads = 1 if cfg.share_heads else 2
    heads = [SRNHead(cfg.fpn_channels, cfg.head_channels, NUM_ANCHORS, neck_norm) for _ in range(n_heads)]
    return ISRN(backbone, neck, heads, model_config=cfg, loss_config=loss or LossConfig(),
                inference_config=inference or InferenceConfig())
