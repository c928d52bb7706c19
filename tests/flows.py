"""Whole flows that several test files drive: ingest a folder, then run its queue in-process."""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.runner import run_plan
from workers.base import Kind, StageInput, result_to_json
from workers.keyframes import KeyframesStage
from workers.probe import ProbeStage

#: The keys the default plan names: what `show` and `status` call current in tests that run
#: with the default options.
DEFAULT_KEYS = Plan.default().current_keys()


def sqlite_config_in(data: Path, models_dir: Path) -> QarinaConfig:
    """A SQLite store in the folder `data` (made if missing), for fixtures of any scope."""
    data.mkdir(parents=True, exist_ok=True)
    return QarinaConfig(
        data_dir=data,
        db_url=f"sqlite:///{data / 'qarina.sqlite3'}",
        operator="tester",
        models_root=models_dir,
    )


class KeyframesNext(KeyframesStage):
    """The keyframes stage as a newer version would be: the same name, another version."""

    version: ClassVar[str] = str(int(KeyframesStage.version) + 1)


def ingest_and_run(
    store: Store, config: QarinaConfig, folder: Path, source: str = "test-source", priority: int = 3
) -> list[str]:
    """Ingest `folder` and process every job with the sequential runner; the items' hashes."""
    plan = Plan.default(settings=config)
    summary = ingest_paths(store, plan, config, [folder], source=source, priority=priority)
    run_plan(store, plan, config)
    return summary.sha256s


def api_call(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request to the API served at `url` (http://HOST:PORT), on a fresh connection: a
    dict body goes as JSON, bytes as they are. The status, the headers (names lower-cased)
    and the parsed JSON reply (None when empty)."""
    sent = dict(headers or {})
    payload: bytes | None = None
    if isinstance(body, bytes):
        payload = body
        sent.setdefault("Content-Type", "application/octet-stream")
    elif body is not None:
        payload = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, payload, sent)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    answered = {name.lower(): value for name, value in response.getheaders()}
    return response.status, answered, json.loads(raw) if raw else None


def probed_item(path: Path, kind: Kind | None = None) -> StageInput:
    """`path` as a stage receives it after the probe: its hash, its kind, the probe result."""
    probe = ProbeStage().run(StageInput("0" * 64, path, Kind.OTHER), path.parent)
    probed = result_to_json(probe.result)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    return StageInput(sha256, path, kind or Kind(probed["kind"]), {"probe": probed})
