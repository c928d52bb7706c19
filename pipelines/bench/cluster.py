"""`qarina bench cluster`: one photo backlog on one worker node and on two, PostgreSQL store.

Both clusters run on this machine with `ray start`, as cluster.yaml starts real nodes, and
hold the same CPUs in all: one node with two, or two nodes with one each. So the figure is
what spreading over nodes costs (scheduling across raylets, each node's own actors starting),
not extra hardware; on real machines the second node brings its own cores. Each round runs
`qarina run --address` as its own process on a fresh database and data folder.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.bench.backlog import scratch_postgres_database
from pipelines.bench.photos import make_photos
from pipelines.bench.report import finish, machine_info, median
from pipelines.config import QarinaConfig
from pipelines.local_cluster import local_cluster

_QARINA = str(Path(sys.executable).parent / "qarina")
#: (worker nodes, CPUs each): the same two CPUs either way.
TOPOLOGIES = {"one_node": (1, 2), "two_nodes": (2, 1)}


def _round(
    topology: tuple[int, int], admin_url: str, photos: Path, scratch: Path, models_dir: Path
) -> float:
    """Seconds for `qarina run --address` to finish the backlog on a fresh store."""
    workers, cpus = topology
    data = Path(tempfile.mkdtemp(prefix="data-", dir=scratch))
    with (
        scratch_postgres_database(admin_url) as url,
        local_cluster(workers, cpus, {"QARINA_MODELS_DIR": str(models_dir)}) as cluster,
    ):
        env = {**cluster.env, "QARINA_DB_URL": url}
        subprocess.run(
            [_QARINA, "--data", str(data), "ingest", str(photos), "--source", "bench"],
            env=env, check=True, capture_output=True, timeout=1800,
        )  # fmt: skip
        started = time.perf_counter()
        subprocess.run(
            [_QARINA, "--data", str(data), "run", "--address", cluster.address],
            env=env, check=True, capture_output=True, timeout=3600,
        )  # fmt: skip
        return time.perf_counter() - started


def bench_cluster(
    settings: QarinaConfig,
    output: Path,
    photos: int = 300,
    runs: int = 3,
    size: tuple[int, int] = (1600, 1200),
) -> dict[str, Any]:
    """Photos per second on one node and on two, medians of `runs` alternating rounds."""
    admin_url = settings.bench_pg_url
    if not admin_url:
        raise ValueError("set QARINA_BENCH_PG_URL to a PostgreSQL admin URL: the store at scale")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-", dir=settings.data_dir) as scratch:
        folder = Path(scratch)
        made = make_photos(folder / "photos", photos, size)
        seconds: dict[str, list[float]] = {name: [] for name in TOPOLOGIES}
        for number in range(runs):
            order = list(TOPOLOGIES) if number % 2 == 0 else list(TOPOLOGIES)[::-1]
            for name in order:
                seconds[name].append(
                    _round(TOPOLOGIES[name], admin_url, folder / "photos", folder,
                           settings.models_dir)
                )  # fmt: skip
        machine = machine_info(folder)
    medians = {name: median(values) for name, values in seconds.items()}
    rates = {name: round(photos / medians[name], 2) for name in TOPOLOGIES}
    ratio = round(medians["two_nodes"] / medians["one_node"], 3)
    result = {
        "benchmark": "cluster",
        "machine": machine,
        "photos": {"count": photos, "size": list(size), "made": made},
        "topologies": {
            name: {
                "worker_nodes": TOPOLOGIES[name][0],
                "cpus_per_node": TOPOLOGIES[name][1],
                "runs_s": [round(value, 2) for value in seconds[name]],
                "median_s": round(medians[name], 2),
                "photos_per_s": rates[name],
            }
            for name in TOPOLOGIES
        },
        "two_nodes_over_one": ratio,
    }
    headline = (
        f"{photos} photos of {size[0]}x{size[1]}, medians of {runs}: one node"
        f" {rates['one_node']} photos/s, two nodes {rates['two_nodes']} photos/s"
        f" (time ratio two/one {ratio})"
    )
    return finish(result, output, headline)
