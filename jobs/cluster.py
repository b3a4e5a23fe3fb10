"""Can the Ray cluster hold a job's workers, now or once its autoscaler adds nodes?

Ray Train retries an infeasible worker group forever (docs/platform-notes.md), so a job asks first:

    verdict = placement_verdict(bundles, nodes, node_types)        # pure, below
    wait_for_resources(bundles, timeout_s=600, what="scaling: 8 workers")   # the Ray adapter

- The bundles fit the nodes the cluster has: go.
- They do not, but the autoscaler's node types (`max_count` of each, as KubeRay reports them to the
  GCS) could hold them: ask the autoscaler for them (`ray.autoscaler.sdk.request_resources`) and
  wait up to `scaling.resources_timeout_s`.
- No node type could ever hold them (a bundle larger than any node type, or more than the node
  types' maximum counts): fail at once, naming what is missing and what the cluster offers.
- A cluster without autoscaler (nodes added by hand, `ray.cluster_utils.Cluster`): wait, up to the
  same timeout, for someone to add nodes. The local platform's head never grows: fail at once.
Capacity is judged against the nodes' total resources: what other jobs use now is Ray's to queue.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Literal

log = logging.getLogger(__name__)

Bundle = dict[str, float]


@dataclasses.dataclass(frozen=True)
class NodeType:
    """A node group the autoscaler can launch: its resources per node and how many at most."""

    name: str
    resources: Bundle
    max_count: int
    """-1: unbounded."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    state: Literal["fits", "scalable", "impossible", "wait"]
    message: str


def _fits(bundle: Bundle, free: Bundle) -> bool:
    return all(free.get(name, 0.0) + 1e-9 >= amount for name, amount in bundle.items() if amount > 0)


def pack(bundles: Sequence[Bundle], nodes: Sequence[Bundle]) -> list[int] | None:
    """First-fit decreasing: a node index per bundle (in the given order), or None if some bundle fits nowhere.

    Ray's placement-group PACK/SPREAD strategies may place differently, but whenever first-fit
    decreasing finds a placement one exists, and for equal bundles (a worker group) it is exact.
    """
    free = [dict(node) for node in nodes]
    order = sorted(range(len(bundles)), key=lambda i: tuple(-v for _, v in sorted(bundles[i].items())))
    placement = [-1] * len(bundles)
    for i in order:
        for n, room in enumerate(free):
            if _fits(bundles[i], room):
                for name, amount in bundles[i].items():
                    room[name] = room.get(name, 0.0) - amount
                placement[i] = n
                break
        else:
            return None
    return placement


def placement_verdict(bundles: Sequence[Bundle], nodes: Sequence[Bundle], node_types: Sequence[NodeType] | None,
                      *, grows: bool = True) -> Verdict:
    """Whether `bundles` fit the `nodes` (total resources), could fit once the autoscaler launches
    nodes of `node_types` (None: no autoscaler), or never can. `grows=False`: nothing adds nodes."""
    need = _total(bundles)
    if pack(bundles, nodes) is not None:
        return Verdict("fits", f"the cluster holds {_fmt(need)}")
    offer = f"the cluster has {_fmt(_total(nodes))} on {len(nodes)} node(s)"
    if node_types is None:
        if not grows:
            return Verdict("impossible", f"{_fmt(need)} needed, {offer}, and nothing adds nodes to it")
        return Verdict("wait", f"{_fmt(need)} needed, {offer} and no autoscaler: waiting for nodes to be added")
    for bundle in bundles:
        if not any(_fits(bundle, t.resources) for t in node_types) and not any(_fits(bundle, n) for n in nodes):
            kinds = ", ".join(f"{t.name} ({_fmt(t.resources)})" for t in node_types) or "none"
            return Verdict("impossible", f"a worker needs {_fmt(bundle)}, more than any node offers: nodes "
                                         f"{_fmt_nodes(nodes)}; autoscaler node types {kinds}")
    # Everything the autoscaler may launch, each type up to its max count, beside the nodes there.
    if pack(bundles, max_capacity(nodes, node_types, unbounded_as=len(bundles))) is None:
        ceiling = ", ".join(f"{t.name} × {t.max_count if t.max_count >= 0 else '∞'}" for t in node_types)
        return Verdict("impossible", f"{_fmt(need)} needed, more than the autoscaler's maximum ({ceiling}) "
                                     f"beside {offer}")
    return Verdict("scalable", f"{_fmt(need)} needed, {offer}: asking the autoscaler for nodes")


def _total(bundles: Sequence[Bundle]) -> Bundle:
    total: Bundle = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            total[name] = total.get(name, 0.0) + amount
    return {k: v for k, v in total.items() if k in ("CPU", "GPU") or v}


def _fmt(resources: Bundle) -> str:
    shown = {k: v for k, v in sorted(resources.items()) if k in ("CPU", "GPU", "memory") or k.startswith("accelerator")}
    return " + ".join(f"{v:g} {k}" for k, v in shown.items() if k != "memory" or v) or "nothing"


def _fmt_nodes(nodes: Sequence[Bundle]) -> str:
    return "; ".join(_fmt(n) for n in nodes) or "none"


# ---------------------------------------------------------------- the Ray adapter
def cluster_nodes() -> list[Bundle]:
    """Total resources of each alive node of the connected cluster."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def autoscaler_node_types() -> list[NodeType] | None:
    """The node types the cluster's autoscaler may launch (None: no autoscaler config in the GCS)."""
    try:
        from ray._private.state import state  # what Ray Data reads for the same question

        config = state.get_cluster_config()
    except Exception as error:  # noqa: BLE001 - an older GCS without the key: no autoscaler information
        log.debug("no autoscaler configuration: %s", error)
        return None
    if config is None or not config.node_group_configs:
        return None
    return [NodeType(name=g.name, resources=dict(g.resources), max_count=int(g.max_count))
            for g in config.node_group_configs if g.max_count != 0 and g.resources]


class ClusterTooSmallError(RuntimeError):
    """The cluster cannot hold the job's workers (now and within the wait)."""


def wait_for_resources(bundles: list[Bundle], *, timeout_s: float, what: str, grows: bool = True,
                       poll_s: float = 2.0, sleep: Callable[[float], None] = time.sleep) -> Verdict:
    """Return once `bundles` fit the cluster's nodes; raise `ClusterTooSmallError` naming `what` when
    they never can or the wait runs out."""
    deadline = time.monotonic() + timeout_s
    requested = False
    last_message = ""
    while True:
        node_types = autoscaler_node_types()
        verdict = placement_verdict(bundles, cluster_nodes(), node_types, grows=grows)
        if verdict.state == "fits":
            if requested:
                _request(None)
            return verdict
        if verdict.state == "impossible":
            raise ClusterTooSmallError(f"{what}: {verdict.message}")
        if verdict.state == "scalable" and not requested:
            _request(bundles)
            requested = True
        if verdict.message != last_message:
            log.warning("%s: %s (up to %.0f s, scaling.resources_timeout_s)", what, verdict.message, timeout_s)
            last_message = verdict.message
        if time.monotonic() >= deadline:
            if requested:
                _request(None)
            raise ClusterTooSmallError(f"{what}: {verdict.message}; still not there after {timeout_s:.0f} s "
                                       "(scaling.resources_timeout_s)")
        sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def _request(bundles: list[Bundle] | None) -> None:
    """Ask the autoscaler for `bundles` at once (None: withdraw; Train's own demand takes over)."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[dict(b) for b in bundles] if bundles else [])


def worker_bundles(num_workers: int, cpus_per_worker: float, use_gpu: bool) -> list[Bundle]:
    """The placement-group bundles of a Train worker group (Ray: one bundle per worker)."""
    bundle: Bundle = {"CPU": cpus_per_worker}
    if use_gpu:
        bundle["GPU"] = 1.0
    return [dict(bundle) for _ in range(num_workers)]


def trials_that_fit(per_trial: list[Bundle], capacity: Sequence[Bundle], limit: int) -> int:
    """How many copies (at most `limit`) of a trial's bundles (its driver + workers) fit `capacity` at once."""
    fits = 0
    for count in range(1, limit + 1):
        if pack(per_trial * count, capacity) is None:
            break
        fits = count
    return fits


def max_capacity(nodes: Sequence[Bundle], node_types: Sequence[NodeType] | None, unbounded_as: int) -> list[Bundle]:
    """The nodes there, plus every node the autoscaler may launch (`unbounded_as` of an unbounded type)."""
    capacity = list(nodes)
    for t in node_types or ():
        capacity.extend([t.resources] * (t.max_count if t.max_count >= 0 else unbounded_as))
    return capacity
