"""The Prometheus endpoint: queue depth, jobs per second and failures, scraped over HTTP."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.local_cluster import free_port
from pipelines.metrics import serve_metrics
from pipelines.samples import hostile, photos
from tests.flows import DEFAULT_KEYS, ingest_and_run


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_report_queue_throughput_and_failures(
    store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(3):
        photos.photo(folder / f"p{index}.jpg", size=(64, 48), seed=index)
    hostile.html_page(folder / "clip.mp4")
    ingest_and_run(store, config, folder)
    port = free_port()
    server = serve_metrics(store, DEFAULT_KEYS, "127.0.0.1", port)
    try:
        metrics = _scrape(port)
    finally:
        server.shutdown()
    assert metrics[("qarina_items", ())] == 4
    assert metrics[("qarina_open_jobs", ())] == 0
    assert metrics[("qarina_jobs", (("stage", "probe"), ("state", "done")))] == 3
    assert metrics[("qarina_jobs", (("stage", "hashes"), ("state", "done")))] == 3
    refused = (("reason", "unsupported_type"), ("stage", "probe"))
    assert metrics[("qarina_failed_jobs", refused)] == 1
    assert metrics[("qarina_stage_jobs_per_second", (("stage", "probe"),))] > 0
