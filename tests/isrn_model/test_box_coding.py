"""Encode/decode as an inverse pair; values by hand; the exp clamp."""

import math

import pytest
import torch

from isrn_model.box_coding import BBOX_XFORM_CLIP, decode, encode


def test_encode_by_hand():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size 10 × 20
    target = torch.tensor([[2.0, 4.0, 22.0, 24.0]])  # centre (12, 14), size 20 × 20
    # dx = (12 − 5)/10 = 0.7; dy = (14 − 10)/20 = 0.2; dw = log(20/10); dh = log(20/20) = 0
    assert encode(anchor, target)[0].tolist() == pytest.approx([0.7, 0.2, math.log(2.0), 0.0])


def test_round_trip():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    ref = torch.cat([xy, xy + torch.rand(50, 2, generator=g) * 50 + 1], dim=1)
    xy2 = torch.rand(50, 2, generator=g) * 100
    gt = torch.cat([xy2, xy2 + torch.rand(50, 2, generator=g) * 50 + 1], dim=1)
    torch.testing.assert_close(decode(ref, encode(ref, gt)), gt, atol=1e-4, rtol=1e-5)


def test_decode_clamps_log_size():
    anchor = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = decode(anchor, torch.tensor([[0.0, 0.0, 100.0, 100.0]]))
    # width 16 · exp(log(1000/16)) = 1000, centred at 8 → [−492, 508]
    assert BBOX_XFORM_CLIP == pytest.approx(math.log(62.5))
    assert out[0].tolist() == pytest.approx([-492.0, -492.0, 508.0, 508.0])
    assert torch.isfinite(out).all()
