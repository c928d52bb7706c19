"""The API alone on a store (`python -m pipelines.api`), and the wait for it to answer: for
the tests and `qarina bench api`."""

from __future__ import annotations

import argparse
import http.client
import logging
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from pipelines.api.app import create_app
from pipelines.api.auth import TokensFileError
from pipelines.api.context import ApiSettings
from pipelines.config import QarinaConfig
from pipelines.session import open_store


def wait_until_serving(process: subprocess.Popen[bytes], port: int, timeout_s: float) -> None:
    """Return once the API that `process` runs (`python -m pipelines.api`) answers on `port`:
    with no token its answer is 401, whatever the path.

    Raises:
        RuntimeError: the process ended first, or nothing answered within `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API server exited {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/openapi.json")
            if connection.getresponse().status == 401:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the API server did not answer within {timeout_s:.0f} s")


def main(argv: Sequence[str] | None = None) -> None:
    """The API alone on a store, with no driver: for the tests and `qarina bench api`, where
    processing would change the store under the requests being checked or timed.
    `qarina serve --http` is how the API runs in service."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m pipelines.api", description=main.__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--allow-root", type=Path, action="append", default=[])
    parser.add_argument("--upload-max-bytes", type=int, default=4 << 30)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = QarinaConfig.from_env(args.data)
    except ValueError as error:
        parser.error(str(error))
    store = open_store(config)
    try:
        settings = ApiSettings(args.tokens, tuple(args.allow_root), args.upload_max_bytes)
        try:
            app = create_app(store, config, settings, on_register=lambda: None)
        except TokensFileError as error:
            raise SystemExit(str(error)) from None
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    finally:
        store.close()
