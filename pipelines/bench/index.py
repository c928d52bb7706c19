"""`qarina bench index`: the near-duplicate index at a million PDQ hashes.

Three figures planners need before a backlog of millions: how long one query takes on one
core (the matcher runs a query per arriving hash), how long linking everything to everything
takes (a rebuild), and how much memory the index holds. The hashes are random 256-bit codes
with planted near-duplicate groups (copies of a base with 1-31 bits flipped), so the right
answer is known; random codes spread evenly over the hash tables, real PDQ hashes less so,
which the report says. Recall is measured twice: of the planted pairs, and against exact
search (faiss's brute-force binary index) for a random sample of queries.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from pipelines.bench.report import finish, latency_ms, machine_info, scratch_folder
from pipelines.config import QarinaConfig
from pipelines.dedup.index import PDQ_BITS, SOURCES, HashIndex
from pipelines.dedup.reports import clusters_of_pairs

_TARGET_QUERY_MS = 3.0
_TARGET_CLUSTER_S = 600.0
_TARGET_RECALL = 0.999

U8 = npt.NDArray[np.uint8]


def _planted(total: int, groups: int, seed: int) -> tuple[U8, list[tuple[int, int]]]:
    """`total` random codes, the last rows of which are copies of earlier ones with 1-31 bits
    flipped (2-4 copies per group); the planted (base, copy) pairs."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(total, PDQ_BITS // 8), dtype=np.uint8)
    pairs = []
    row = total
    for group in range(groups):
        for _ in range(int(rng.integers(1, 4))):
            row -= 1
            bits = np.unpackbits(codes[group])
            bits[rng.choice(PDQ_BITS, int(rng.integers(1, 32)), replace=False)] ^= 1
            codes[row] = np.packbits(bits)
            pairs.append((group, row))
    return codes, pairs


def _peak_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def bench_index(
    config: QarinaConfig,
    output: Path,
    *,
    hashes: int = 1_000_000,
    groups: int = 10_000,
    queries: int = 2000,
    exact_sample: int = 2000,
    threshold: int = 31,
) -> dict[str, Any]:
    """Build, query (one thread) and self-join (all threads) an index of `hashes` codes."""
    with scratch_folder(config) as scratch:
        machine = machine_info(scratch)
    memory_before = _peak_mib()
    codes, planted = _planted(hashes, groups, seed=7)
    index = HashIndex()
    started = time.perf_counter()
    index.add_codes(
        "bench",
        codes,
        sources=[SOURCES.index("photo")] * hashes,
        variants=[index.variants.index("full")] * hashes,
        times=[float("nan")] * hashes,
    )
    build_s = time.perf_counter() - started
    memory_built = _peak_mib()

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(11)
    sample = rng.choice(hashes, queries, replace=False)
    single = []
    for row in sample:
        query = codes[row : row + 1]
        began = time.perf_counter()
        list(index.search(query, threshold))
        single.append(time.perf_counter() - began)
    photo_query = []
    for row in sample[:200]:
        # One photo searches with 89 hashes: whole, 7 dihedral turns, 80 crop probes (+1 crop).
        batch = np.concatenate([codes[row : row + 1], rng.integers(0, 256, (88, 32), np.uint8)])
        began = time.perf_counter()
        list(index.search(batch.astype(np.uint8), threshold))
        photo_query.append(time.perf_counter() - began)
    faiss.omp_set_num_threads(threads)

    started = time.perf_counter()
    pairs = list(index.self_join(threshold))
    groups_found = clusters_of_pairs((first, second) for first, second, _ in pairs)
    cluster_s = time.perf_counter() - started

    found = {(first, second) for first, second, _ in pairs}
    planted_recall = sum((min(a, b), max(a, b)) in found for a, b in planted) / len(planted)
    exact = faiss.IndexBinaryFlat(PDQ_BITS)
    exact.add(codes)
    probe_rows = np.concatenate(
        [
            np.array([b for _, b in planted[: exact_sample // 2]]),
            rng.choice(hashes, exact_sample // 2),
        ]
    )
    limits, _, ids = exact.range_search(codes[probe_rows], threshold + 1)
    truth = {
        (min(int(row), int(other)), max(int(row), int(other)))
        for position, row in enumerate(probe_rows)
        for other in ids[limits[position] : limits[position + 1]]
        if int(other) != int(row)
    }
    exact_recall = sum(pair in found for pair in truth) / len(truth) if truth else 1.0
    result: dict[str, Any] = {
        "benchmark": "index",
        "machine": machine,
        "params": {
            "hashes": hashes,
            "planted_pairs": len(planted),
            "threshold": threshold,
            "index": "faiss IndexBinaryMultiHash, 11 substrings of 23 bits, up to 2 flipped",
            "hashes_are": "uniform random 256-bit codes plus planted copies (1-31 bits flipped)",
            "query_threads": 1,
            "join_threads": threads,
        },
        "build_s": round(build_s, 2),
        "query_one_hash": latency_ms(single),
        "query_one_photo_89_hashes": latency_ms(photo_query),
        "cluster": {
            "seconds": round(cluster_s, 1),
            "pairs": len(pairs),
            "clusters": len(groups_found),
            "planted_recall": round(planted_recall, 5),
            "exact_sample_pairs": len(truth),
            "recall_vs_exact": round(exact_recall, 5),
        },
        "memory_mib": {
            "before": memory_before,
            "after_build": memory_built,
            "peak": _peak_mib(),
        },
        "target": {
            "query_ms": _TARGET_QUERY_MS,
            "cluster_s": _TARGET_CLUSTER_S,
            "recall": _TARGET_RECALL,
            "met_query": latency_ms(single)["median_ms"] < _TARGET_QUERY_MS,
            "met_cluster": cluster_s < _TARGET_CLUSTER_S,
            "met_recall": exact_recall >= _TARGET_RECALL,
        },
    }
    headline = (
        f"{hashes} hashes: build {build_s:.1f} s; query median"
        f" {result['query_one_hash']['median_ms']} ms (one hash, one core),"
        f" {result['query_one_photo_89_hashes']['median_ms']} ms (a photo's 89 hashes);"
        f" all pairs within {threshold}: {len(pairs)} in {cluster_s:.1f} s on {threads} threads,"
        f" recall {exact_recall:.4f} vs exact, planted {planted_recall:.4f};"
        f" peak memory {result['memory_mib']['peak']} MiB"
    )
    return finish(result, output, headline)
