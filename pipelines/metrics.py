"""Prometheus metrics for operators: queue depth, throughput and failures, read from the store.

The store is the source of truth on every node, so the numbers are read from it at each
scrape rather than counted in one driver's memory: they stay right across several drivers,
restarts and nodes, and a scrape costs the same few indexed queries as `qarina status`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from evidence.records import CurrentKeys
from evidence.store import Store

#: Throughput is averaged over this window, as in `qarina status`.
WINDOW_S = 300


class StoreCollector(Collector):
    """Turns one `Store.status()` report into metric families at each scrape."""

    def __init__(self, store: Store, current: CurrentKeys, window_s: int = WINDOW_S) -> None:
        self._store = store
        self._current = current
        self._window_s = window_s

    def collect(self) -> Iterator[GaugeMetricFamily]:
        report = self._store.status(window_s=self._window_s, current=self._current)
        jobs = GaugeMetricFamily(
            "qarina_jobs",
            "Jobs under the current keys per stage and state; queued and leased are the"
            " queue depth.",
            labels=["stage", "state"],
        )
        for stage in report.stages:
            for state, count in sorted(stage.counts.items()):
                jobs.add_metric([stage.stage, state], count)
        yield jobs
        rate = GaugeMetricFamily(
            "qarina_stage_jobs_per_second",
            f"Jobs of a stage ended per second over the last {self._window_s} s.",
            labels=["stage"],
        )
        for stage_name, per_second in sorted(report.throughput_by_stage.items()):
            rate.add_metric([stage_name], per_second)
        yield rate
        failures = GaugeMetricFamily(
            "qarina_failed_jobs",
            "Failed (final) and dead (out of attempts) jobs per stage and failure reason.",
            labels=["stage", "reason"],
        )
        for (stage_name, reason), count in sorted(report.failures_by_stage.items()):
            failures.add_metric([stage_name, reason], count)
        yield failures
        bugs = GaugeMetricFamily(
            "qarina_stage_errors",
            "Jobs ended by an exception in stage code (a bug, not the item), per stage.",
            labels=["stage"],
        )
        for stage_name, count in report.stage_errors.items():
            bugs.add_metric([stage_name], count)
        yield bugs
        superseded = GaugeMetricFamily(
            "qarina_superseded_items",
            "Items holding only results made under keys the current plan no longer names.",
            labels=["stage"],
        )
        for stage_name, count in sorted(report.superseded_items.items()):
            superseded.add_metric([stage_name], count)
        yield superseded
        others = GaugeMetricFamily(
            "qarina_jobs_under_other_keys",
            "Jobs under keys the current plan does not name, per stage and state.",
            labels=["stage", "state"],
        )
        for stage_name, counts in sorted(report.other_key_jobs.items()):
            for state, count in sorted(counts.items()):
                others.add_metric([stage_name, state], count)
        yield others
        yield GaugeMetricFamily("qarina_items", "Originals in the store.", value=report.items)
        yield GaugeMetricFamily("qarina_open_jobs", "Jobs not yet ended.", value=report.open_jobs)


def serve_metrics(store: Store, current: CurrentKeys, host: str, port: int) -> Any:
    """Serve /metrics on `host:port` from a background thread; returns the HTTP server.

    `host` defaults to loopback at the command line: metrics name stages and failure counts,
    which stay inside the evidence network unless an operator binds them elsewhere.
    """
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StoreCollector(store, current))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
