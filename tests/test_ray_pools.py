"""Actor pools grow only for stages that keep their actors busy (no Ray needed to check)."""

from __future__ import annotations

import time

import pytest

from evidence.records import Success
from pipelines import ray_runtime
from pipelines.ray_runtime import _Pool
from workers.base import CPU_NODE
from workers.hashes import HashesStage
from workers.keyframes import KeyframesStage
from workers.probe import ProbeStage
from workers.transcript import TranscriptStage


def _outcome(duration_s: float) -> Success:
    return Success({}, {"duration_s": duration_s})


def test_a_cheap_stage_does_not_grow_and_a_busy_one_does(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    cheap, busy = (_Pool(ProbeStage(), ProbeStage.resources, max_size=2) for _ in range(2))
    for pool in (cheap, busy):
        pool.actors.append(object())
        pool.window_start = clock[0]
    clock[0] += 2.0  # two seconds of work reported
    cheap.record_work([_outcome(0.001)] * 200)  # 0.2 s of stage code: 10% busy
    busy.record_work([_outcome(0.01)] * 180)  # 1.8 s: 90% busy
    assert not cheap.wants_more()
    assert busy.wants_more()


def test_growth_needs_a_window_long_enough_to_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [50.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    pool = _Pool(ProbeStage(), ProbeStage.resources, max_size=2, window_start=clock[0])
    pool.actors.append(object())
    clock[0] += ray_runtime._WINDOW_S[0] / 2
    pool.record_work([_outcome(10.0)])
    assert not pool.wants_more()


def test_transcription_asks_for_a_gpu_only_where_the_cluster_has_one() -> None:
    on_cpus = TranscriptStage.resources.on_cluster({"CPU": 16.0})
    assert (on_cpus.num_gpus, on_cpus.num_cpus) == (0.0, 2.0)
    on_gpus = TranscriptStage.resources.on_cluster({"CPU": 16.0, "GPU": 2.0})
    assert (on_gpus.num_gpus, on_gpus.num_cpus) == (1.0, 1.0)
    assert ProbeStage.resources.on_cluster({"CPU": 16.0, "GPU": 2.0}).num_gpus == 0.0
    # Two GPUs hold two transcription actors, however many CPUs the cluster has.
    assert ray_runtime.RayExecutor._max_size(on_gpus, total_cpus=16, total_gpus=2) == 2
    assert ray_runtime.RayExecutor._max_size(on_cpus, total_cpus=16, total_gpus=0) == 8


def test_decoding_and_hashing_are_steered_to_cpu_nodes_only_where_there_are_some() -> None:
    cluster = {"CPU": 8.0, "GPU": 1.0, CPU_NODE: 2.0}
    assert HashesStage.resources.on_cluster(cluster).prefers == CPU_NODE
    assert KeyframesStage.resources.on_cluster(cluster).prefers == CPU_NODE
    assert HashesStage.resources.on_cluster({"CPU": 8.0}).prefers is None
    assert TranscriptStage.resources.on_cluster(cluster).prefers is None
