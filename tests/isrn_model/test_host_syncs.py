"""The host-sync counter and the explicit-device check, on the constructs they are documented to catch."""

import pytest
import torch

from isrn_model.host_syncs import ImplicitDeviceError, count_host_syncs, require_explicit_device


def test_counts_each_kind_of_sync_once():
    x = torch.arange(6.0, requires_grad=True)
    mask = x.detach() > 2
    with count_host_syncs() as syncs:
        x.sum().item()                      # _local_scalar_dense
        int(x.detach()[0]), float(x.detach()[1]), bool(x.detach()[2])  # 3 more
        x[mask].sum().backward()            # index with a mask + its backward (index_put with the mask)
        mask.nonzero()
        torch.where(mask)                   # nonzero inside
        x.detach().unique()
        x.detach().tolist(), x.detach().cpu()
        x.detach().cpu().numpy()            # one read: the .cpu(), not the .numpy() of its result
    assert dict(syncs.by_op) == {
        "aten._local_scalar_dense": 4,
        "aten.index (boolean mask)": 1,
        "aten.index_put (boolean mask)": 1,
        "aten.nonzero": 2,
        "aten.unique": 1,
        "Tensor.tolist": 1,
        "Tensor.cpu": 2,
    }
    assert syncs.total == 12


def test_sync_free_forms_are_not_counted():
    x = torch.arange(6.0)
    mask = x > 2
    with count_host_syncs() as syncs:
        torch.where(mask, x, 0.0).sum()                  # a mask as weights, not as an index
        x[torch.arange(3)]                                # integer indices
        mask.nonzero_static(size=3)
        torch.repeat_interleave(x, torch.tensor([1, 0, 2, 0, 0, 1]), output_size=4)
        x.to(x.device, non_blocking=True)
    assert syncs.total == 0, syncs.by_op


def test_counts_inside_backward_and_nests():
    x = torch.ones(4, requires_grad=True)
    with count_host_syncs() as outer:
        y = x[x.detach() > 0].sum()  # 1
        with count_host_syncs() as inner:
            y.backward()             # 1: the backward's index_put with the mask
    assert inner.total == 1 and outer.total == 2


def test_factory_without_device_is_refused_with_its_caller():
    with require_explicit_device():
        torch.zeros(3, device="cpu")
        torch.tensor([1.0, 2.0], device="cpu")
        torch.arange(4, device=torch.device("cpu"))
        t = torch.ones(2, device="cpu")
        torch.as_tensor(t), t.new_zeros(3), torch.zeros_like(t)  # follow t's device
        with pytest.raises(ImplicitDeviceError, match=r"torch.ones called without device= at .*test_host_syncs.py:\d+"):
            torch.ones(2)
        for make in (lambda: torch.tensor([1.0]), lambda: torch.full((2,), 1.0), lambda: torch.empty(1),
                     lambda: torch.linspace(0, 1, 3), lambda: torch.rand(2), lambda: torch.eye(2),
                     lambda: torch.as_tensor([1.0]), lambda: torch.randint(0, 3, (2,))):
            with pytest.raises(ImplicitDeviceError):
                make()
    torch.ones(2)  # outside the block: allowed
