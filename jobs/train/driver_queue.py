"""A Ray queue whose actor lives on the driver's own node.

With `num_cpus: 0` Ray may place a queue's actor on any node, a worker node included. When that node
is lost (a failure a run must survive: the workers restart elsewhere from their checkpoint), the
driver's next call on the queue raises `ActorUnavailableError` and the whole job fails; the
multi-node test saw it once the actor of the failure counter's queue had landed on the node it
removed. On the driver's node the queue lives exactly as long as the driver does.
"""

from __future__ import annotations

from typing import Any


def driver_queue() -> Any:
    """A `ray.util.queue.Queue` pinned to the node of this driver (connecting to Ray if needed, as the
    queue itself would)."""
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        ray.init()
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
