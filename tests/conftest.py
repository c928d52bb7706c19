"""Shared fixtures: a store on each backend, a config on a temporary data folder, log hygiene.

The store fixture runs each store test on SQLite and on PostgreSQL. Without a reachable
PostgreSQL the PostgreSQL half is skipped on a developer's machine, but fails in CI (CI=true),
where it must run.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from evidence.store import Store
from pipelines.config import QarinaConfig
from tests.flows import sqlite_config_in

POSTGRES_ADMIN_URL = os.environ.get(
    "QARINA_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _postgres_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        engine = sa.create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
    except sa.exc.OperationalError as error:
        return f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {type(error.orig).__name__}"
    return None


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh database for this test session, dropped at the end."""
    problem = _postgres_available()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem}; PostgreSQL tests must run in CI")
        pytest.skip(problem)
    name = f"qarina_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _reset_postgres(url: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text("DROP SCHEMA public CASCADE"))
        connection.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store URL for each backend; PostgreSQL starts from an empty schema every test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite3'}"
    url: str = request.getfixturevalue("postgres_database")
    _reset_postgres(url)
    return url


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One assembled Whisper base for the whole run: joining it costs a 145 MB copy."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def config(tmp_path: Path, db_url: str, models_dir: Path) -> QarinaConfig:
    data = tmp_path / "data"
    data.mkdir()
    return QarinaConfig(data_dir=data, db_url=db_url, operator="tester", models_root=models_dir)


@pytest.fixture
def sqlite_config(tmp_path: Path, models_dir: Path) -> QarinaConfig:
    """For tests about the runtime rather than the backend: SQLite only."""
    return sqlite_config_in(tmp_path / "data", models_dir)


@pytest.fixture
def store(config: QarinaConfig) -> Iterator[Store]:
    opened = Store.open(config.db_url, config.blob_root)
    yield opened
    opened.close()


@pytest.fixture(autouse=True)
def fail_on_logged_errors(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """A test that logs an error has hidden a failure somewhere: fail it.

    Tests that provoke errors on purpose say so with `@pytest.mark.allow_logged_errors`.
    """
    yield
    if request.node.get_closest_marker("allow_logged_errors"):
        return
    errors = [record for record in caplog.get_records("call") if record.levelno >= logging.ERROR]
    if errors:
        pytest.fail("errors were logged: " + "; ".join(record.getMessage() for record in errors))
