"""cluster.yaml: what `ray up cluster.yaml --no-config-cache` checks before it opens any SSH
connection, plus the project's own rules for it (no secrets, token auth, private ports)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.commands import _bootstrap_config

from workers.base import CPU_NODE

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CLUSTER_YAML.read_text())
    return loaded


def _start_commands(config: dict[str, Any]) -> list[str]:
    return [*config["head_start_ray_commands"], *config["worker_start_ray_commands"]]


def test_ray_up_accepts_it(config: dict[str, Any]) -> None:
    """The same preparation and schema validation `ray up --no-config-cache` runs first."""
    resolved = _bootstrap_config(config, no_config_cache=True)
    assert resolved["provider"]["type"] == "local"
    node_types = resolved["available_node_types"]
    assert node_types["local.cluster.node"]["max_workers"] == len(config["provider"]["worker_ips"])


def test_no_secret_is_written_in_it() -> None:
    text = CLUSTER_YAML.read_text()
    urls = re.findall(r'postgresql\+psycopg://[^"]+', text)
    assert urls, "every node gets QARINA_DB_URL"
    for url in urls:
        assert "$(cat /etc/qarina/db-password)" in url
    assert not re.search(r"(?i)(password|token)\s*[:=]\s*['\"]?\w{6,}", text)


def test_every_node_authenticates_and_listens_privately(config: dict[str, Any]) -> None:
    starts = [command for command in _start_commands(config) if "ray start" in command]
    assert len(starts) == 2
    for command in starts:
        assert "RAY_AUTH_MODE=token" in command
        assert "RAY_AUTH_TOKEN_PATH=/etc/qarina/ray-token" in command
        assert '--node-ip-address="$QARINA_NODE_IP"' in command
        assert "QARINA_DATA=/srv/qarina-data" in command and "QARINA_DB_URL=" in command
    head = next(command for command in starts if "--head" in command)
    assert "--dashboard-host=127.0.0.1" in head


def test_worker_groups_carry_the_resource_stages_steer_by(config: dict[str, Any]) -> None:
    workers = " ".join(config["worker_start_ray_commands"])
    assert "nvidia-smi" in workers, "GPU nodes are told apart by their hardware"
    assert json.dumps({CPU_NODE: 1}) in workers
    assert json.dumps({CPU_NODE: 1}) in " ".join(config["head_start_ray_commands"])


def test_setup_installs_the_tools_and_the_project(config: dict[str, Any]) -> None:
    setup = " ".join(config["setup_commands"])
    for package in ("ffmpeg", "libimage-exiftool-perl", "espeak-ng"):
        assert package in setup
    assert "make setup" in setup
    assert config["file_mounts"] == {"/opt/qarina": "."}
