"""Two checks that keep GPU code efficient and correct by construction, testable on a CPU.

* :func:`count_host_syncs` — counts the operations that make the host wait for the device (a
  ``TorchDispatchMode``). On a GPU each one stalls the Python thread until every kernel queued before
  it has run, so the CPU can no longer run ahead and queue the next kernels: a training step with a
  sync per image runs at the speed of its slowest round trip. The count is the same on a CPU, where
  the operations are cheap, so a CPU test can bound it.
* :func:`require_explicit_device` — raises when a tensor factory is called without ``device=``
  (a ``TorchFunctionMode``). Such a tensor lands on the CPU; on a GPU it then meets CUDA tensors and
  the op fails ("Expected all tensors to be on the same device"), or it is copied to the device
  with a synchronising copy. On a CPU both work, so only this check finds them there.

Typical test::

    from isrn_model.host_syncs import count_host_syncs, require_explicit_device

    with count_host_syncs() as syncs, require_explicit_device():
        losses = model(images, targets)
        sum(losses.values()).backward()
    assert syncs.total <= 8, syncs.by_op       # e.g. {"aten._local_scalar_dense": 1}

Both are thread-local (the dispatch and function mode stacks are), apply to everything run inside
the ``with`` block on that thread, including autograd's backward pass on CPU tensors, and nest.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

ALWAYS_SYNC = {
    # A Python number or bool from a tensor: .item(), int(t), float(t), bool(t), `if t:`.
    aten._local_scalar_dense.default: "aten._local_scalar_dense",
    # Ops whose output size depends on the data: the host must read it to allocate the output.
    aten.nonzero.default: "aten.nonzero",  # also torch.where(cond), argwhere, nonzero(as_tuple=True)
    aten.masked_select.default: "aten.masked_select",
    aten._unique.default: "aten.unique",
    aten._unique2.default: "aten.unique",
    aten.unique_dim.default: "aten.unique",
    aten.unique_consecutive.default: "aten.unique",
    aten.unique_dim_consecutive.default: "aten.unique",
    aten.bincount.default: "aten.bincount",  # the output length is max(input) + 1
    # Ops returning a Python bool.
    aten.equal.default: "aten.equal",
    aten.allclose.default: "aten.allclose",
    aten.is_nonzero.default: "aten._local_scalar_dense",
}
"""Dispatcher ops that always make the host wait, with the name they are counted under."""

BOOL_INDEXED = {
    aten.index.Tensor: "aten.index (boolean mask)",              # x[mask]
    aten.index_put.default: "aten.index_put (boolean mask)",     # backward of x[mask]
    aten.index_put_.default: "aten.index_put (boolean mask)",    # x[mask] = v
    aten._index_put_impl_.default: "aten.index_put (boolean mask)",
}
"""Indexing ops that sync when an index is a boolean (or uint8) mask: the mask is turned into
indices with ``nonzero`` inside the kernel, out of the dispatcher's sight, so they are counted here."""

COPIES = {aten._to_copy.default, aten.copy_.default}

HOST_READS = {torch.Tensor.cpu: "Tensor.cpu", torch.Tensor.tolist: "Tensor.tolist",
              torch.Tensor.numpy: "Tensor.numpy(force=True)"}
"""Tensor methods that bring data to the host, counted where they are called: on a CPU run the
tensor is already there and the dispatcher sees nothing, on a GPU each is a device→host copy.
Plain ``Tensor.numpy()`` is not one: it raises on a device tensor (the ``.cpu()`` before it is)."""


@dataclass
class HostSyncCount:
    """What :func:`count_host_syncs` counted so far: ``total`` and ``by_op`` (name → count)."""

    by_op: Counter = field(default_factory=Counter)
    _reading: int = field(default=0, repr=False)  # > 0 inside a counted host read: its copy is not counted again

    @property
    def total(self) -> int:
        return sum(self.by_op.values())


def _is_mask(index: object) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


def _blocking_cross_device_copy(func: object, args: tuple, kwargs: dict) -> bool:
    """A copy between the host and a device that PyTorch ends with a stream synchronisation.

    PyTorch synchronises the stream after every host↔device copy unless ``non_blocking=True``; a CPU
    run never has one (both sides are the CPU), a GPU run shows the ones the code makes.
    """
    if func is aten._to_copy.default:
        source, target = args[0].device, kwargs.get("device")
        non_blocking = kwargs.get("non_blocking", False)
    else:
        target, source = args[0].device, args[1].device
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
    if target is None or non_blocking:
        return False
    target = torch.device(target)
    return source.type != target.type and "cpu" in (source.type, target.type)


def _sync_name(func: object, args: tuple, kwargs: dict) -> str | None:
    if func in ALWAYS_SYNC:
        return ALWAYS_SYNC[func]
    if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
        return "aten.repeat_interleave"  # the output length is the sum of the repeats
    if func in BOOL_INDEXED and any(_is_mask(i) for i in args[1]):
        return BOOL_INDEXED[func]
    if func in COPIES and _blocking_cross_device_copy(func, args, kwargs):
        return "host<->device copy"
    return None


class _SyncCounter(TorchDispatchMode):
    def __init__(self, count: HostSyncCount) -> None:
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - PyTorch's protocol
        kwargs = kwargs or {}
        name = _sync_name(func, args, kwargs)
        if name is not None and not self.count._reading:
            self.count.by_op[name] += 1
        return func(*args, **kwargs)


class _HostReadCounter(TorchFunctionMode):
    def __init__(self, count: HostSyncCount) -> None:
        super().__init__()
        self.count = count

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - PyTorch's protocol
        kwargs = kwargs or {}
        name = HOST_READS.get(func)
        if name is None or (func is torch.Tensor.numpy and not kwargs.get("force", False)):
            return func(*args, **kwargs)
        self.count.by_op[name] += 1
        self.count._reading += 1
        try:
            return func(*args, **kwargs)
        finally:
            self.count._reading -= 1


@contextmanager
def count_host_syncs() -> Iterator[HostSyncCount]:
    """Count the host synchronisations of the code run inside the block.

    Counted at the dispatcher (so forward, backward and library code alike):

    * ``aten._local_scalar_dense``: every Python number from a tensor (``.item()``, ``int(t)``,
      ``float(t)``, ``bool(t)``, ``if t:``);
    * data-dependent output sizes: ``nonzero`` (and ``torch.where(cond)``, ``argwhere``),
      ``masked_select``, ``unique`` in all its forms, ``bincount``, ``repeat_interleave`` without
      ``output_size``;
    * boolean-mask indexing: ``index`` / ``index_put`` with a bool or uint8 index (``x[mask]``, its
      backward, ``x[mask] = v``);
    * ops returning a Python bool: ``equal``, ``allclose``;
    * blocking copies between the host and a device (``.to(device)``, ``copy_`` without
      ``non_blocking=True``): seen on a GPU run only.

    Counted where they are called (a ``TorchFunctionMode``), since on a CPU run the dispatcher sees
    nothing: ``Tensor.cpu()``, ``Tensor.tolist()``, ``Tensor.numpy(force=True)`` — one each, even
    on a host tensor (on a GPU each is a device→host copy). ``t.cpu().numpy()`` counts once.

    Not counted: ``nonzero_static``, ``repeat_interleave(output_size=…)``, ``non_blocking`` copies,
    ``.to("cpu")`` on a CPU run; and the host→device copy that ``torch.tensor(data, device="cuda")``
    makes inside its C++ constructor, below the dispatcher (avoid it: build the tensor with a factory
    on the device, or ``torch.from_numpy(a).to(device, non_blocking=True)``).

    Yields a :class:`HostSyncCount`, updated as the block runs.
    """
    count = HostSyncCount()
    with _HostReadCounter(count), _SyncCounter(count):
        yield count


FACTORIES = (
    torch.tensor, torch.as_tensor, torch.asarray, torch.scalar_tensor,
    torch.zeros, torch.ones, torch.full, torch.empty, torch.empty_strided,
    torch.arange, torch.linspace, torch.logspace, torch.eye,
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.normal,
    torch.tril_indices, torch.triu_indices,
)
"""Tensor factories that :func:`require_explicit_device` checks. Not listed, since they follow their
input's device: ``*_like``, ``Tensor.new_*``; nor ``torch.from_numpy`` (always on the host, by name)."""


class ImplicitDeviceError(RuntimeError):
    """A tensor factory was called without ``device=`` inside :func:`require_explicit_device`."""


def _caller() -> str:
    """``file:line`` of the innermost frame outside torch and this module."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename == __file__ or "/torch/" in frame.f_code.co_filename):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "<unknown>"


class _ExplicitDevice(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - PyTorch's protocol
        kwargs = kwargs or {}
        if func in _FACTORY_SET and kwargs.get("device") is None:
            from_tensor = func in (torch.tensor, torch.as_tensor, torch.asarray) and args and isinstance(args[0], torch.Tensor)
            normal_of_tensors = func is torch.normal and any(isinstance(a, torch.Tensor) for a in args)
            if not (from_tensor or normal_of_tensors):
                raise ImplicitDeviceError(
                    f"torch.{func.__name__} called without device= at {_caller()}: the tensor lands on the CPU "
                    "and meets the model's CUDA tensors on a GPU; pass device=<the tensor it meets>.device")
        return func(*args, **kwargs)


_FACTORY_SET = frozenset(FACTORIES)


@contextmanager
def require_explicit_device() -> Iterator[None]:
    """Raise :class:`ImplicitDeviceError` when a factory of :data:`FACTORIES` is called in the block
    without ``device=`` (``torch.tensor(t)`` / ``as_tensor(t)`` of a tensor ``t`` stay on its device
    and pass). ``device="cpu"`` passes: a deliberate host tensor is named as such.

    It sees Python-level calls only (a ``TorchFunctionMode``): factories called from PyTorch's C++
    are not checked. Scope it to the code under test: ``torch.optim`` makes step counters on the
    host on purpose.
    """
    with _ExplicitDevice():
        yield
