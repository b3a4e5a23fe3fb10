"""The learning-rate schedule, worked by hand."""

from __future__ import annotations

import pytest
import torch

from jobs.spec import OptimConfig
from jobs.train.schedule import build_optimizer, learning_rate


def test_linear_warmup_then_step_decay():
    optim = OptimConfig(lr=0.1, warmup_steps=10, warmup_factor=0.01, schedule="step", milestones=(0.5, 0.75), gamma=0.1)
    # step 0: 0.1 × 0.01 = 0.001; step 5: 0.1 × (0.01 × 0.5 + 0.5) = 0.0505
    assert learning_rate(0, 100, optim) == pytest.approx(0.001)
    assert learning_rate(5, 100, optim) == pytest.approx(0.0505)
    assert learning_rate(10, 100, optim) == pytest.approx(0.1)
    assert learning_rate(49, 100, optim) == pytest.approx(0.1)
    assert learning_rate(50, 100, optim) == pytest.approx(0.01)   # 50/100 reaches the first milestone
    assert learning_rate(75, 100, optim) == pytest.approx(0.001)


def test_cosine_reaches_zero_at_the_end():
    optim = OptimConfig(lr=0.2, warmup_steps=0, schedule="cosine")
    assert learning_rate(0, 100, optim) == pytest.approx(0.2)
    assert learning_rate(50, 100, optim) == pytest.approx(0.1)    # cos(π/2) = 0 → half
    assert learning_rate(100, 100, optim) == pytest.approx(0.0, abs=1e-12)


def test_norms_and_biases_get_no_weight_decay():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    optimizer = build_optimizer(model, OptimConfig(weight_decay=1e-4))
    decay, no_decay = optimizer.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3, 3, 3])] and decay["weight_decay"] == 1e-4
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
