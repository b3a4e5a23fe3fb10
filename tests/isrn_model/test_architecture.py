"""The architecture pinned to docs/model.md: every number below is worked out by hand.

Backbone parameter counts are compared with torchvision's ResNets (torchvision is not installed
here). Source: the `num_params` of `ResNet18_Weights.IMAGENET1K_V1` (11,689,512) and
`ResNet50_Weights.IMAGENET1K_V1` (25,557,032) in torchvision's model documentation
(pytorch.org/vision/stable/models), less the 1000-way classifier fc (512·1000 + 1000 = 513,000 and
2048·1000 + 1000 = 2,049,000). Per stage, a norm layer has 2·C parameters, BatchNorm and GroupNorm alike.
"""

import math

import pytest
import torch
from torch import nn

from isrn_model.anchors import anchors_for_image
from isrn_model.backbone import ResNet
from isrn_model.builder import build_isrn
from isrn_model.config import LEVELS, ModelConfig
from isrn_model.norm import make_norm_layers
from isrn_model.rfe import RFE

TORCHVISION_BACKBONE = {18: 11_689_512 - 513_000, 50: 25_557_032 - 2_049_000}
STAGE_PARAMS = {
    18: {
        # 7·7·3·64 + 2·64
        "stem": 9_408 + 128,
        # 2 blocks × (2 · 3·3·64·64 + 2 · 2·64)
        "layer1": 2 * (2 * 36_864 + 256),
        # block 1: 3·3·64·128 + 3·3·128·128 + 1·1·64·128 (shortcut) + 3 · 2·128; block 2: 2 · 3·3·128·128 + 2 · 2·128
        "layer2": (73_728 + 147_456 + 8_192 + 768) + (2 * 147_456 + 512),
        "layer3": (294_912 + 589_824 + 32_768 + 1_536) + (2 * 589_824 + 1_024),
        "layer4": (1_179_648 + 2_359_296 + 131_072 + 3_072) + (2 * 2_359_296 + 2_048),
    },
    50: {
        "stem": 9_408 + 128,
        # block 1: 1·1·64·64 + 3·3·64·64 + 1·1·64·256 + 1·1·64·256 (shortcut) + norms 2·(64 + 64 + 256 + 256)
        # blocks 2–3: 1·1·256·64 + 3·3·64·64 + 1·1·64·256 + 2·(64 + 64 + 256)
        "layer1": (4_096 + 36_864 + 16_384 + 16_384 + 1_280) + 2 * (16_384 + 36_864 + 16_384 + 768),
        "layer2": (32_768 + 147_456 + 65_536 + 131_072 + 2_560) + 3 * (65_536 + 147_456 + 65_536 + 1_536),
        "layer3": (131_072 + 589_824 + 262_144 + 524_288 + 5_120) + 5 * (262_144 + 589_824 + 262_144 + 3_072),
        "layer4": (524_288 + 2_359_296 + 1_048_576 + 2_097_152 + 10_240) + 2 * (1_048_576 + 2_359_296 + 1_048_576 + 6_144),
    },
}
# ISRN's root stem [ours]: 3·3·3·32 + 3·3·32·32 + 3·3·32·64 + GN 2·(32 + 32 + 64)
ROOT_STEM_PARAMS = 864 + 9_216 + 18_432 + 256


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_backbone_parameters_per_stage_match_torchvision(depth, norm):
    backbone = ResNet(depth, make_norm_layers(norm, 32)[0], stem="standard")
    counts = {name: _count(getattr(backbone, name)) for name in STAGE_PARAMS[depth]}
    assert counts == STAGE_PARAMS[depth]
    assert sum(counts.values()) == _count(backbone) == TORCHVISION_BACKBONE[depth]
    root = ResNet(depth, make_norm_layers(norm, 32)[0], stem="root")
    assert _count(root.stem) == ROOT_STEM_PARAMS
    # The root stops at stride 2, so layer1's first block strides: ResNet-18's then needs a 1×1/2
    # shortcut (64·64 + 2·64 = 4,224); ResNet-50's has one already (64 → 256 channels).
    shortcut = {18: 4_096 + 128, 50: 0}[depth]
    assert _count(root.layer1) == STAGE_PARAMS[depth]["layer1"] + shortcut
    assert _count(root) == TORCHVISION_BACKBONE[depth] - STAGE_PARAMS[depth]["stem"] + ROOT_STEM_PARAMS + shortcut


@pytest.mark.parametrize("depth", [18, 50])
def test_root_stem_keeps_stride_two_and_the_first_conv_narrow(depth):
    stem = ResNet(depth, make_norm_layers("gn", 32)[0], stem="root").stem
    convs = [m for m in stem.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1))]
    assert not any(isinstance(m, nn.MaxPool2d) for m in stem.modules())
    assert stem(torch.zeros(1, 3, 64, 64)).shape == (1, 64, 32, 32)  # stride 2 before layer1


@pytest.mark.parametrize(("depth", "c_channels", "c6"), [(18, [64, 128, 256, 512], 256), (50, [256, 512, 1024, 2048], 1024)])
def test_levels_strides_and_channels(depth, c_channels, c6):
    torch.manual_seed(0)
    model = build_isrn(ModelConfig(depth=depth)).eval()
    size = 256
    with torch.no_grad():
        feats = model.backbone(model.preprocess(torch.zeros(1, 3, size, size)))
        first, second = model.neck(feats)
    # C2–C5: strides 4, 8, 16, 32
    assert [tuple(f.shape[1:]) for f in feats] == [(c, size >> lvl, size >> lvl) for c, lvl in zip(c_channels, (2, 3, 4, 5))]
    # C6 = 3×3/2 on C5 (C5 channels → half: 2048 → 1024 on ResNet-50), C7 = 3×3/2 → 256
    neck = model.neck
    assert (neck.c6[0].in_channels, neck.c6[0].out_channels, neck.c6[0].stride) == (c_channels[3], c6, (2, 2))
    assert (neck.c7[0].in_channels, neck.c7[0].out_channels, neck.c7[0].stride) == (c6, 256, (2, 2))
    # both steps: six levels of 256 channels at strides 4 … 128
    for maps in (first, second):
        assert [tuple(m.shape[1:]) for m in maps] == [(256, size >> lvl, size >> lvl) for lvl in LEVELS]


def test_p6_comes_from_the_c5_lateral_and_p7_from_p6():
    torch.manual_seed(0)
    model = build_isrn(ModelConfig(depth=18, base_width=16, fpn_channels=32, head_channels=32)).eval()
    seen = {}
    model.neck.lateral[3].register_forward_hook(lambda m, i, o: seen.__setitem__("c5_lateral", o))
    model.neck.p6.register_forward_hook(lambda m, i, o: seen.update(p6_in=i[0], p6_out=o))
    model.neck.p7.register_forward_hook(lambda m, i, o: seen.__setitem__("p7_in", i[0]))
    with torch.no_grad():
        model.neck(model.backbone(torch.randn(1, 3, 256, 256)))
    assert seen["p6_in"] is seen["c5_lateral"] and seen["p7_in"] is seen["p6_out"]


def test_group_norm_has_32_groups_in_every_layer_at_full_width():
    model = build_isrn(ModelConfig(depth=50))
    for part, expected in (("backbone", 3 + 16 * 3 + 4), ("neck", 2 + 6 + 4 + 4 + 2), ("heads", 2 * 2)):
        # backbone: root stem 3 + 16 bottlenecks × 3 + 4 shortcuts; neck: C6, C7, 6 reductions,
        # 4 laterals, 4 outputs, P6, P7; head: 2 convs in each of 2 subnets
        norms = [m for m in getattr(model, part).modules() if isinstance(m, nn.GroupNorm)]
        assert len(norms) == expected, part
        assert {m.num_groups for m in norms} == {32}, part
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_rfe_branch_kernels_and_widths():
    rfe = RFE(256)
    branches = [[m for m in b if isinstance(m, nn.Conv2d)] for b in rfe.branches]
    assert [b[1].kernel_size for b in branches] == [(1, 5), (5, 1), (1, 3), (3, 1)]
    for first, asym, last in branches:  # 1×1 256→64, asymmetric 64→64, 1×1 64→64
        assert (first.in_channels, first.out_channels, first.kernel_size) == (256, 64, (1, 1))
        assert (asym.in_channels, asym.out_channels) == (64, 64)
        assert (last.in_channels, last.out_channels, last.kernel_size) == (64, 64, (1, 1))
    fuse = rfe.fuse[0]
    assert (fuse.in_channels, fuse.out_channels, fuse.kernel_size) == (256, 256, (1, 1))
    x = torch.randn(1, 256, 7, 9)
    assert rfe(x).shape == x.shape  # the input is added back
    head = build_isrn(ModelConfig(depth=18)).heads[0]
    assert sum(isinstance(m, RFE) for m in head.modules()) == 2  # one in each subnet


def test_head_prior_and_init():
    torch.manual_seed(0)
    head = build_isrn(ModelConfig(depth=18)).heads[0]
    prior = -math.log((1 - 0.01) / 0.01)  # −log(99) = −4.59512
    assert prior == pytest.approx(-4.59512, abs=1e-5)
    assert torch.allclose(head.cls_pred.bias, torch.full((2,), prior))
    assert torch.allclose(torch.sigmoid(head.cls_pred.bias), torch.full((2,), 0.01))
    assert torch.equal(head.box_pred.bias, torch.zeros(8))  # 4 deltas × A = 2
    weights = torch.cat([head.cls_pred.weight.flatten(), head.box_pred.weight.flatten()])
    assert weights.std().item() == pytest.approx(0.01, rel=0.1)  # normal(0, 0.01) over 2,560 values


def test_anchors_per_level_at_1024():
    # 2 anchors per location: 2 · (1024 / stride)² for strides 4 … 128
    expected = [2 * 256**2, 2 * 128**2, 2 * 64**2, 2 * 32**2, 2 * 16**2, 2 * 8**2]
    assert expected == [131_072, 32_768, 8_192, 2_048, 512, 128] and sum(expected) == 174_720
    model = build_isrn(ModelConfig(depth=18, base_width=16, fpn_channels=32, head_channels=32))
    assert model.anchor_counts(1024, 1024) == expected
    assert anchors_for_image(1024, 1024).shape == (174_720, 4)
