"""What `qarina serve` refuses before it starts anything: options it would otherwise pair
wrongly or run without."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app


@pytest.mark.parametrize(
    "extra",
    [
        ["--watch", "B"],  # a folder without its source
        ["--watch", "B", "--source", "b", "--request", "RFA-1"],  # one request, two folders
        ["--watch", "B", "--source", "b", "--priority", "5"],
        ["--http", "127.0.0.1:8470"],  # an API without tokens
    ],
)
def test_serve_refuses_options_it_cannot_pair(tmp_path: Path, extra: list[str]) -> None:
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    args = ["--data", str(tmp_path / "data"), "serve", "--sequential"]
    args += ["--watch", str(tmp_path / "A"), "--source", "a"]
    args += [str(tmp_path / part) if part in ("A", "B") else part for part in extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
