"""The real service app on a loopback port, in a thread of the test process: what the review
pages' tests talk to, the browser's and the plain HTTP ones alike."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from evidence.store import Store
from pipelines.api import ApiSettings, create_app
from pipelines.config import QarinaConfig
from pipelines.local_cluster import free_port

REVIEWER_TOKEN = "reviewer-" + "3d" * 20


def write_tokens(path: Path) -> Path:
    """A tokens file holding the reviewer's token, readable by its owner only."""
    path.write_text(f"reviewer {REVIEWER_TOKEN}\n")
    path.chmod(0o600)
    return path


@contextmanager
def serving(store: Store, config: QarinaConfig, tokens: Path) -> Iterator[str]:
    """The app `qarina serve --http` runs (no driver, no drop folders) for the block; its
    base URL. uvicorn in a thread leaves signals alone, as in the service."""
    app = create_app(store, config, ApiSettings(tokens, (), 1 << 30), on_register=lambda: None)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="review pages", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the service ended before it served"
        assert time.monotonic() < deadline, "the service did not start within 30 s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
