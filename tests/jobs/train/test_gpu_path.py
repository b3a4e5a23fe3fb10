"""The trainer's GPU path, proved on a CPU where a CPU can prove it.

What needs a GPU (NCCL, CUDA events, pinned memory, compile) is settled by bench/gpu_check.py; here:
the collectives run for real in a 1-rank gloo group and make no tensor without naming its device
(on a GPU such a tensor would be a CPU tensor in an NCCL collective), the GPU options leave a CPU
model alone, the timer's shares add up, and the feeder keeps the loader's buffer contract.
"""

from __future__ import annotations

import datetime
import time

import pytest
import torch
import torch.distributed as dist

from jobs.spec import load_spec
from jobs.train.collectives import broadcast_from_rank_0, gather_to_rank_0, parameter_spread
from jobs.train.steps import BatchFeeder
from jobs.train.timing import StepTimer
from jobs.train.trainer import prepare_for_device
from tests.conftest import free_ports


@pytest.fixture()
def one_rank_group(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_ports(1)[0]))
    dist.init_process_group("gloo", rank=0, world_size=1, timeout=datetime.timedelta(seconds=30))
    yield
    dist.destroy_process_group()


def test_the_collectives_run_in_a_group_of_one_and_name_their_device(one_rank_group):
    from isrn_model.builder import build_isrn
    from isrn_model.host_syncs import require_explicit_device

    device = torch.device("cpu")
    model = build_isrn(load_spec("smoke").model)
    with require_explicit_device():
        assert parameter_spread(model, device) == 0.0
        assert broadcast_from_rank_0({"hard": 0.25}, device) == {"hard": 0.25}
        assert gather_to_rank_0({("e", "a"): 1}, device) == [{("e", "a"): 1}]


def test_a_tensor_made_without_its_device_is_caught():
    from isrn_model.host_syncs import require_explicit_device

    def checksum_the_old_way(model: torch.nn.Module) -> torch.Tensor:
        # As the worker did before: a CPU tensor, handed to all_gather on an NCCL group.
        return torch.tensor([float(sum(p.detach().double().sum() for p in model.parameters()))], dtype=torch.float64)

    with require_explicit_device(), pytest.raises(Exception, match="device"):
        checksum_the_old_way(torch.nn.Linear(2, 2))


def test_gpu_only_options_leave_a_cpu_model_alone_and_channels_last_applies_everywhere():
    from isrn_model.builder import build_isrn

    spec = load_spec("smoke", ["train.channels_last=true", "train.compile=true", "train.cudnn_benchmark=true"])
    model = prepare_for_device(build_isrn(spec.model), spec, torch.device("cpu"), distributed=False)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain = prepare_for_device(build_isrn(spec.model), load_spec("smoke", ["train.channels_last=false"]),
                               torch.device("cpu"), distributed=False)
    assert next(m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)).weight.is_contiguous()
    assert not any(type(m).__name__ == "OptimizedModule" or getattr(m, "_compiled_call_impl", None)
                   for m in model.modules())


def test_the_timer_shares_sum_to_one_and_other_is_the_uncovered_wall_time():
    timer = StepTimer(torch.device("cpu"))
    start = timer.mark()
    time.sleep(0.02)
    timer.interval("forward", start, timer.mark())
    timer.add("data_wait", 0.01)
    with timer.wall("evaluation"):
        time.sleep(0.01)
    shares = timer.shares(wall_s=0.1)
    assert abs(sum(shares.values()) - 1) < 1e-9
    assert set(shares) == {"forward", "data_wait", "evaluation", "other"}
    assert 0.5 < shares["other"] < 0.65  # 0.1 s of wall time, ~0.04 s of it covered


def test_the_feeder_keeps_the_loaders_buffer_until_the_model_has_read_it():
    from data_shards.batch_buffers import BatchBuffers

    buffers = BatchBuffers(capacity=1)
    images = buffers.take((2, 3, 8, 8))
    batch = {"images": images, "targets": [{"boxes": torch.zeros(0, 4)}, {"boxes": torch.ones(1, 4)}]}
    feeder = BatchFeeder(torch.device("cpu"))
    assert feeder.images(batch) is images  # no copy on the CPU
    assert [t["boxes"].shape[0] for t in feeder.targets(batch)] == [0, 1]
    assert buffers.take((2, 3, 8, 8)).data_ptr() != images.data_ptr()  # still held: a fresh buffer
    feeder.done_with(batch)
    assert buffers.take((2, 3, 8, 8)).data_ptr() == images.data_ptr()  # handed back, reused


@pytest.mark.parametrize("batch", [4, 16])
def test_a_whole_training_step_makes_a_constant_number_of_host_syncs(batch):
    """The trainer's step (feeder, forward, losses, backward, gradient clipping, SGD) reads nothing back
    from the device but the targets' check: the losses stay on the device until the log interval."""
    from isrn_model.builder import build_isrn
    from isrn_model.host_syncs import count_host_syncs
    from jobs.train.schedule import build_optimizer
    from jobs.train.steps import train_step
    from jobs.train.timing import GradientClock

    spec = load_spec("smoke", ["optim.name=sgd"])
    model = build_isrn(spec.model, loss=spec.loss, inference=spec.inference)
    optimizer, timer, device = build_optimizer(model, spec.optim), StepTimer(torch.device("cpu")), torch.device("cpu")
    clock = GradientClock(model, timer)
    step = random_batch(batch, 128, faces=7, seed=batch)  # the count does not depend on the size
    train_step(model, [dict(step)], optimizer, feeder=BatchFeeder(device), timer=timer, clock=clock, grad_clip_norm=10)
    with count_host_syncs() as syncs:
        losses = train_step(model, [dict(step)], optimizer, feeder=BatchFeeder(device), timer=timer, clock=clock,
                            grad_clip_norm=10)
    assert syncs.total <= 8, dict(syncs.by_op)  # 1 here: the targets' degenerate-box check
    assert all(isinstance(v, torch.Tensor) for v in losses.values())


def random_batch(batch: int, size: int, faces: int, seed: int) -> dict:
    """uint8 images [B, 3, S, S] as the loader sends them, `faces` xyxy boxes per image, 8 to S/3 wide."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    targets = []
    for _ in range(batch):
        wh = (8 + torch.rand(faces, 1, generator=generator) * (size / 3 - 8)) * torch.tensor([[1.0, 1.25]])
        xy = torch.rand(faces, 2, generator=generator) * (size - wh)
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1)})
    return {"images": images, "targets": targets}
