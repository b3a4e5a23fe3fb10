"""Placement of a job's bundles on a cluster's nodes, now or after the autoscaler launches nodes (hand-worked)."""

from __future__ import annotations

import pytest

from jobs.cluster import NodeType, pack, placement_verdict, trials_that_fit, worker_bundles

CPU1 = {"CPU": 1.0}


def test_pack_is_first_fit_decreasing_per_node():
    # Two 1-CPU workers on nodes of 0 (a KubeRay head) and 2 CPUs: both on node 1.
    assert pack([CPU1, CPU1], [{"CPU": 0.0}, {"CPU": 2.0}]) == [1, 1]
    # Three 1-CPU workers, 2 + 0.5 CPUs: the third fits nowhere (0.5 < 1) though the sum is 2.5.
    assert pack([CPU1] * 3, [{"CPU": 2.0}, {"CPU": 0.5}]) is None
    # The larger bundle is placed first: 1.5 on the 2-CPU node, then 1 on the 1-CPU node.
    assert pack([CPU1, {"CPU": 1.5}], [{"CPU": 1.0}, {"CPU": 2.0}]) == [0, 1]
    # A GPU worker needs a GPU node; CPUs alone do not do.
    assert pack([{"CPU": 1.0, "GPU": 1.0}], [{"CPU": 64.0}]) is None


def test_worker_bundles_follow_the_scaling_section():
    assert worker_bundles(2, 0.5, False) == [{"CPU": 0.5}, {"CPU": 0.5}]
    assert worker_bundles(1, 8, True) == [{"CPU": 8.0, "GPU": 1.0}]


GPU_NODE = {"CPU": 8.0, "GPU": 1.0, "memory": 48e9}


@pytest.mark.parametrize("bundles, nodes, types, grows, state, words", [
    # KubeRay: head of 0 CPUs, GPU workers from 0 replicas up to 8: 8 GPU workers are scalable.
    (worker_bundles(8, 8, True), [{"CPU": 0.0}], [NodeType("gpu-workers", GPU_NODE, 8)], True, "scalable",
     "64 CPU + 8 GPU needed"),
    # Nine GPU workers can never fit 8 nodes of one GPU.
    (worker_bundles(9, 8, True), [{"CPU": 0.0}], [NodeType("gpu-workers", GPU_NODE, 8)], True, "impossible",
     "more than the autoscaler's maximum (gpu-workers × 8)"),
    # A worker of 16 CPUs exceeds every node type of 8.
    (worker_bundles(1, 16, True), [{"CPU": 0.0}], [NodeType("gpu-workers", GPU_NODE, 8)], True, "impossible",
     "a worker needs 16 CPU + 1 GPU, more than any node offers"),
    # Unbounded node type (-1): anything that fits one node scales.
    (worker_bundles(20, 1, False), [], [NodeType("cpu", {"CPU": 4.0}, -1)], True, "scalable", "20 CPU needed"),
    # No autoscaler: wait for somebody to add nodes, unless nothing ever does (the local head).
    (worker_bundles(2, 1, False), [{"CPU": 0.0}], None, True, "wait", "no autoscaler"),
    (worker_bundles(2, 1, False), [{"CPU": 1.0}], None, False, "impossible", "nothing adds nodes"),
    # Already there.
    (worker_bundles(2, 1, False), [{"CPU": 0.0}, {"CPU": 1.0}, {"CPU": 1.0}], None, False, "fits", "holds"),
])
def test_placement_verdict(bundles, nodes, types, grows, state, words):
    verdict = placement_verdict(bundles, nodes, types, grows=grows)
    assert verdict.state == state and words in verdict.message, verdict


def test_trials_that_fit_counts_whole_trials():
    trial = [{"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 0.5}]   # driver + 2 workers = 2 CPUs
    assert trials_that_fit(trial, [{"CPU": 2.0}], limit=4) == 1
    assert trials_that_fit(trial, [{"CPU": 7.0}], limit=4) == 3   # 3 × 2 = 6 <= 7 < 8
    assert trials_that_fit(trial, [{"CPU": 7.0}], limit=2) == 2
    assert trials_that_fit(trial, [{"CPU": 1.5}], limit=4) == 0
