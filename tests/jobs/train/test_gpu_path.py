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


def test_gpu_options_leave_a_cpu_model_alone():
    from isrn_model.builder import build_isrn

    spec = load_spec("smoke", ["train.channels_last=true", "train.compile=true", "train.cudnn_benchmark=true"])
    model = prepare_for_device(build_isrn(spec.model), spec, torch.device("cpu"), distributed=False)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()  # not channels-last
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
