"""The HTTP API on a real server: uvicorn in a subprocess on a free loopback port, over a store
this test process reads directly to check what each call recorded.

One server per backend serves the module (its start costs seconds); each test uses its own
names, sources and requests, so they do not see each other's items.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from evidence.blobs import BlobStore, BlobTooLarge
from evidence.schema import acquisitions, custody_events, jobs
from evidence.store import Store
from pipelines.api import auth
from pipelines.api.auth import ApiToken, TokensFileError, load_tokens, token_owner
from pipelines.api.gate import JSON_BODY_MAX_BYTES
from pipelines.api.standalone import wait_until_serving
from pipelines.config import QarinaConfig
from pipelines.ingest import NotBelow, ingest_below
from pipelines.local_cluster import free_port
from pipelines.plan import Plan
from tests.conftest import _reset_postgres
from tests.flows import api_call

INTAKE_TOKEN = "intake-" + "1f" * 20
OPS_TOKEN = "ops-" + "2e" * 20
UPLOAD_MAX = 64 * 1024
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True)
class Server:
    port: int
    db_url: str
    data: Path
    root: Path
    outside: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = INTAKE_TOKEN,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """One request on a fresh connection; a dict body goes as JSON, bytes as they are."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return Reply(*api_call(self.url, method, path, body, sent))

    def upload(
        self,
        content: bytes,
        name: bytes,
        query: str = "source=phone",
        token: str = INTAKE_TOKEN,
        key: str | None = None,
    ) -> Reply:
        headers = {"X-Original-Name": quote_from_bytes(name)}
        if key is not None:
            headers["Idempotency-Key"] = key
        return self.call("POST", f"/v1/items/upload?{query}", content, token, headers)

    def open_store(self) -> Store:
        return Store.open(self.db_url, self.data / "blobs")


def _declared_only(server: Server, path: str, length: int, token: str | None) -> Reply:
    """A POST that declares `length` bytes of JSON and sends none: answered at once, or the
    read times out (the service waited for the body)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(length))
        if token is not None:
            connection.putheader("Authorization", f"Bearer {token}")
        connection.endheaders()
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


def _streamed(
    server: Server, path: str, content: bytes, token: str, headers: dict[str, str]
) -> int:
    """The status of a POST of `content` sent in chunks of 16 KiB with no length declared:
    the service learns its size only as it reads."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.putrequest("POST", path)
        sent = headers | {"Authorization": f"Bearer {token}", "Transfer-Encoding": "chunked"}
        for header, value in sent.items():
            connection.putheader(header, value)
        connection.endheaders()
        for start in range(0, len(content), 16 * 1024):
            piece = content[start : start + 16 * 1024]
            connection.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        connection.send(b"0\r\n\r\n")
        return connection.getresponse().status
    finally:
        connection.close()


def _write_tokens(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _start(tmp: Path, tokens: Path, db_url: str, *extra: str) -> subprocess.Popen[bytes]:
    port = free_port()
    command = [
        sys.executable, "-m", "pipelines.api", "--data", str(tmp / "data"), "--port", str(port),
        "--tokens", str(tokens), *extra,
    ]  # fmt: skip
    env = dict(os.environ, QARINA_OPERATOR="tester", QARINA_DB_URL=db_url)
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    process.port = port  # type: ignore[attr-defined]
    return process


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The API on each backend: what PostgreSQL refuses (a NUL, a 64-bit priority) must be
    refused as bad input there too, not end in a 500."""
    tmp = tmp_path_factory.mktemp("api")
    db_url = f"sqlite:///{tmp / 'data' / 'qarina.sqlite3'}"
    if request.param == "postgresql":
        db_url = request.getfixturevalue("postgres_database")
        _reset_postgres(db_url)
    root, outside = tmp / "intake", tmp / "elsewhere"
    root.mkdir()
    outside.mkdir()
    tokens = _write_tokens(
        tmp / "tokens",
        f"# who may call\nintake {INTAKE_TOKEN}\n\nops {OPS_TOKEN}\n",
    )
    process = _start(
        tmp, tokens, db_url, "--allow-root", str(root), "--upload-max-bytes", str(UPLOAD_MAX)
    )
    port: int = process.port  # type: ignore[attr-defined]
    try:
        try:
            wait_until_serving(process, port, 60)
        except RuntimeError as error:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"{error}: {output}") from None
        yield Server(port, db_url, tmp / "data", root, outside)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    output = process.stdout.read().decode() if process.stdout else ""
    # Whatever the tests sent, the server's log holds no name, path, query or token.
    for secret in (INTAKE_TOKEN, OPS_TOKEN, "evidence-name", str(root), "Traceback"):
        assert secret not in output


# --- tokens ----------------------------------------------------------------------------------


def test_token_owner_compares_every_token(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = [ApiToken(name, hashlib.sha256(name.encode() * 8).digest()) for name in "abc"]
    compared: list[bytes] = []
    real_compare = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real_compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    assert token_owner(b"a" * 8, tokens) == "a"
    # The first token matched, and the others were compared all the same.
    assert compared == [token.digest for token in tokens]
    compared.clear()
    assert token_owner(b"nobody at all", tokens) is None
    assert len(compared) == 3


def test_tokens_file_must_be_private_well_formed_and_not_empty(tmp_path: Path) -> None:
    good = f"intake {INTAKE_TOKEN}\n"
    for mode in (0o640, 0o604, 0o620, 0o602):
        with pytest.raises(TokensFileError, match="group or others"):
            load_tokens(_write_tokens(tmp_path / "t", good, mode))
    for text, problem in (
        ("", "no token"),
        ("# only a comment\n\n", "no token"),
        ("intake short\n", "shorter than 32"),
        (f"intake {INTAKE_TOKEN} extra\n", "expected `name token`"),
        (f"in take {INTAKE_TOKEN}\n", "expected `name token`"),
        (f"a {INTAKE_TOKEN}\na {OPS_TOKEN}\n", "repeated"),
        (f"a {INTAKE_TOKEN}\nb {INTAKE_TOKEN}\n", "repeated"),
    ):
        with pytest.raises(TokensFileError, match=problem):
            load_tokens(_write_tokens(tmp_path / "t", text))
    with pytest.raises(TokensFileError, match="cannot read"):
        load_tokens(tmp_path / "missing")
    loaded = load_tokens(_write_tokens(tmp_path / "t", good))
    assert [token.name for token in loaded] == ["intake"]


def test_server_refuses_to_start_with_a_readable_tokens_file(tmp_path: Path) -> None:
    tokens = _write_tokens(tmp_path / "tokens", f"intake {INTAKE_TOKEN}\n", 0o644)
    process = _start(tmp_path, tokens, f"sqlite:///{tmp_path / 'refused.sqlite3'}")
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert b"open to group or others" in output
    assert INTAKE_TOKEN.encode() not in output


def test_every_operation_needs_a_known_bearer_token(server: Server) -> None:
    spec = server.call("GET", "/openapi.json").body
    operations = [
        (method.upper(), path.replace("{sha256}", "0" * 64))
        for path, methods in spec["paths"].items()
        for method in methods
    ]
    assert len(operations) == 11
    for method, path in operations:
        for headers in (
            {},
            {"Authorization": "Bearer " + INTAKE_TOKEN[:-1] + "0"},
            {"Authorization": f"Basic {INTAKE_TOKEN}"},
            {"Authorization": "Bearer"},
        ):
            reply = server.call(method, path, token=None, headers=headers)
            assert reply.status == 401, (method, path, headers)
            assert reply.headers["www-authenticate"] == "Bearer"
    assert all(
        spec["paths"][path][method]["security"] == [{"HTTPBearer": []}]
        for path, methods in spec["paths"].items()
        for method in methods
    )
    assert spec["components"]["securitySchemes"]["HTTPBearer"] | {"description": ""} == {
        "type": "http", "scheme": "bearer", "description": "",
    }  # fmt: skip
    # Nor is anything else served without one: the OpenAPI, a path that is no operation.
    for path in ("/openapi.json", "/docs", "/v2/nothing"):
        reply = server.call("GET", path, token=None)
        assert (reply.status, reply.body) == (401, {"detail": "a known bearer token is required"})
        assert reply.headers["www-authenticate"] == "Bearer"


def test_the_token_is_checked_before_the_body_is_read(server: Server) -> None:
    malformed = {"Content-Type": "application/json"}
    for token in (None, INTAKE_TOKEN[:-1] + "0"):
        reply = server.call("POST", "/v1/requests", b"{not json", token, malformed)
        assert reply.status == 401, token
    assert server.call("POST", "/v1/requests", b"{not json", headers=malformed).status == 422
    # Without a token, a body of any length is answered before a byte of it arrives.
    reply = _declared_only(server, "/v1/requests", 10 << 30, token=None)
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    reply = _declared_only(server, "/v1/items/upload?source=phone", 10 << 30, token=None)
    assert reply.status == 401


def test_a_json_body_past_the_cap_is_refused(server: Server) -> None:
    # Up to the cap a body is read, spacing and all.
    padded = b'{"ref": "RFA-padded"}'
    padded += b" " * (JSON_BODY_MAX_BYTES - len(padded))
    as_json = {"Content-Type": "application/json"}
    assert server.call("POST", "/v1/requests", padded, OPS_TOKEN, as_json).status == 200
    # Declared past the cap: refused before a byte is read.
    reply = _declared_only(server, "/v1/requests", JSON_BODY_MAX_BYTES + 1, OPS_TOKEN)
    assert reply.status == 413
    assert str(JSON_BODY_MAX_BYTES) in reply.body["detail"]
    # Streamed without a length: refused as soon as the cap is passed, nothing recorded.
    oversized = b'{"ref": "RFA-oversized", "priority": 1' + b" " * JSON_BODY_MAX_BYTES + b"}"
    assert _streamed(server, "/v1/requests", oversized, OPS_TOKEN, as_json) == 413
    refs = [details["ref"] for _, details in _custody(server, "request")]
    assert "RFA-padded" in refs
    assert "RFA-oversized" not in refs
    assert server.call("GET", "/v1/status?request=RFA-oversized").status == 404


# --- registration by path --------------------------------------------------------------------


def test_register_by_path_inside_the_allowed_roots_only(server: Server) -> None:
    folder = server.root / "drive-7"
    (folder / "sub").mkdir(parents=True)
    (folder / "evidence-name-1.jpg").write_bytes(b"first file")
    (folder / "sub" / "evidence-name-2.jpg").write_bytes(b"second file")
    (server.outside / "secret.txt").write_bytes(b"not for intake")
    (server.root / "escape.txt").symlink_to(server.outside / "secret.txt")
    (server.root / "escape-dir").symlink_to(server.outside)
    (folder / "sub" / "inner-link").symlink_to(server.outside / "secret.txt")

    reply = server.call(
        "POST",
        "/v1/items/register",
        {"path": str(folder), "source": "drive 7", "priority": 5, "request": "RFA-path"},
    )
    assert reply.status == 200, reply.body
    assert reply.body["files"] == 3
    assert reply.body["new_items"] == 2
    # A link inside the folder is an input refused and recorded, never followed outside.
    assert reply.body["refused"] == {"symlink": 1}
    assert sorted(reply.body["sha256s"]) == sorted(
        hashlib.sha256(content).hexdigest() for content in (b"first file", b"second file")
    )

    for path in (
        server.outside / "secret.txt",
        server.root / "escape.txt",
        server.root / "escape-dir" / "secret.txt",
        server.root / ".." / "elsewhere" / "secret.txt",
        Path("/etc/passwd"),
    ):
        reply = server.call("POST", "/v1/items/register", {"path": str(path), "source": "x"})
        assert reply.status == 403, path
    assert (
        server.call(
            "POST", "/v1/items/register", {"path": str(server.root / "nothing"), "source": "x"}
        ).status
        == 404
    )
    assert (
        server.call("POST", "/v1/items/register", {"path": "drive-7", "source": "x"}).status == 422
    )

    store = server.open_store()
    try:
        with store.database.reader.connect() as connection:
            rows = connection.execute(
                sa.select(acquisitions).where(acquisitions.c.source == "drive 7")
            ).all()
            secret = connection.execute(
                sa.select(sa.func.count())
                .select_from(acquisitions)
                .where(acquisitions.c.sha256 == hashlib.sha256(b"not for intake").hexdigest())
            ).scalar_one()
    finally:
        store.close()
    assert {row.original_name for row in rows} == {b"evidence-name-1.jpg", b"evidence-name-2.jpg"}
    assert {(row.operator, row.priority, row.request_ref) for row in rows} == {
        ("api:intake", 5, "RFA-path")
    }
    assert secret == 0


def test_register_by_path_refuses_every_link_below_the_root(server: Server) -> None:
    folder = server.root / "drive-8"
    (folder / "sub").mkdir(parents=True)
    (folder / "evidence-name-8.jpg").write_bytes(b"eighth file")
    (server.root / "alias-8").symlink_to(folder)  # a link that stays inside the root
    (folder / "sub" / "up").symlink_to(folder)
    for path in (
        str(server.root / "alias-8"),
        str(server.root / "alias-8" / "evidence-name-8.jpg"),
        str(folder / "sub" / "up" / "evidence-name-8.jpg"),
        f"{server.root}/..",
        f"{folder}/../../{server.root.name}/drive-8",
    ):
        reply = server.call("POST", "/v1/items/register", {"path": path, "source": "x"})
        assert reply.status == 403, path
    reply = server.call(
        "POST", "/v1/items/register", {"path": f"{folder}/evidence-name-8.jpg/x", "source": "x"}
    )
    assert reply.status == 404
    # `..` goes back up the way it came down: still below the root, no link on the way.
    reply = server.call(
        "POST",
        "/v1/items/register",
        {"path": f"{folder}/sub/../evidence-name-8.jpg", "source": "drive 8"},
    )
    assert (reply.status, reply.body["files"], reply.body["new_items"]) == (200, 1, 1)
    store = server.open_store()
    try:
        with store.database.reader.connect() as connection:
            (row,) = connection.execute(
                sa.select(acquisitions).where(acquisitions.c.source == "drive 8")
            ).all()
    finally:
        store.close()
    assert row.original_path == os.fsencode(folder.resolve() / "evidence-name-8.jpg")


@pytest.mark.parametrize("swapped_when", ["coming down", "walking"])
def test_register_by_path_never_follows_a_folder_swapped_for_a_link(
    sqlite_config: QarinaConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    swapped_when: str,
) -> None:
    """A folder below the root swapped for a link to outside it after the path was checked:
    the link's target holds a file of the same name, which a walk by path would take."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "case" / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "case" / "top.jpg").write_bytes(b"evidence at the top")
    (root / "case" / "sub" / "a.jpg").write_bytes(b"evidence below")
    (outside / "a.jpg").write_bytes(b"outside the root")
    swapped: list[bool] = []

    def swap() -> None:
        if not swapped:
            swapped.append(True)
            (root / "case" / "sub").rename(root / "case" / "sub-moved")
            (root / "case" / "sub").symlink_to(outside)

    real_stat, real_open = os.stat, os.open

    def looked_at(path: Any, **named: Any) -> os.stat_result:
        found = real_stat(path, **named)
        if path == b"sub":  # between the check and the open
            swap()
        return found

    def opening(path: Any, flags: int, mode: int = 0o777, **named: Any) -> int:
        if path == b"sub":  # listed already, opened now
            swap()
        return real_open(path, flags, mode, **named)

    store = Store.open(sqlite_config.db_url, sqlite_config.blob_root)
    try:
        if swapped_when == "coming down":
            monkeypatch.setattr(os, "stat", looked_at)
            with pytest.raises(NotBelow):
                ingest_below(
                    store, Plan.default(), sqlite_config, root, [b"case", b"sub", b"a.jpg"], "x"
                )
        else:
            monkeypatch.setattr(os, "open", opening)
            summary = ingest_below(store, Plan.default(), sqlite_config, root, [b"case"], "x")
            assert (summary.files, summary.refused) == (1, {})
        monkeypatch.undo()
        assert swapped
        with store.database.reader.connect() as connection:
            stored = set(connection.execute(sa.select(acquisitions.c.sha256)).scalars())
    finally:
        store.close()
    assert hashlib.sha256(b"outside the root").hexdigest() not in stored
    assert stored <= {hashlib.sha256(b"evidence at the top").hexdigest()}
    assert (outside / "a.jpg").read_bytes() == b"outside the root"


# --- uploads ---------------------------------------------------------------------------------


def test_upload_is_hashed_and_stored_with_its_name_bytes(server: Server) -> None:
    content = os.urandom(3 * 1024)
    name = "evidence-name-صورة".encode() + b"\xff.jpg"  # not UTF-8 at the end
    reply = server.upload(
        content, name, "source=phone%20A&priority=3&mtime=2024-03-05T14:30:15%2B03:00"
    )
    assert reply.status == 200, reply.body
    sha256 = hashlib.sha256(content).hexdigest()
    assert reply.body == {
        "sha256": sha256,
        "size_bytes": len(content),
        "new_item": True,
        "acquisition_id": reply.body["acquisition_id"],
        "replayed": False,
    }
    blob = BlobStore(server.data / "blobs").path_for(sha256)
    assert blob.read_bytes() == content
    assert not blob.stat().st_mode & 0o222
    store = server.open_store()
    try:
        shown = store.show(sha256, Plan.default().current_keys())
    finally:
        store.close()
    assert shown is not None
    (arrival,) = shown["acquisitions"]
    assert bytes.fromhex(arrival["original_name_hex"]) == name
    assert (arrival["source"], arrival["operator"], arrival["priority"]) == (
        "phone A",
        "api:intake",
        3,
    )
    assert arrival["original_mtime"] == "2024-03-05T11:30:15+00:00"
    assert shown["pending"] == ["probe"]


def test_upload_over_the_cap_is_refused_and_leaves_nothing(server: Server) -> None:
    content = os.urandom(UPLOAD_MAX + 1)
    sha256 = hashlib.sha256(content).hexdigest()
    # Declared too large: refused before a byte is read.
    assert server.upload(content, b"evidence-name-big").status == 413
    # Streamed without a length: refused as soon as the cap is passed.
    name = {"X-Original-Name": "evidence-name-big"}
    assert _streamed(server, "/v1/items/upload?source=phone", content, INTAKE_TOKEN, name) == 413
    assert not BlobStore(server.data / "blobs").exists(sha256)
    assert not list((server.data / "blobs" / "tmp").iterdir())
    refusals = _custody(server, "ingest_refused")
    too_large = [actor for actor, details in refusals if details["reason"] == "too_large"]
    assert too_large == ["qarina-ingest@api:intake"] * 2


def test_a_retried_upload_registers_once(server: Server) -> None:
    content = os.urandom(2048)
    first = server.upload(content, b"evidence-name-r", "source=retry", key="upload-0001")
    again = server.upload(content, b"evidence-name-r", "source=retry", key="upload-0001")
    assert first.status == again.status == 200
    assert again.body == first.body | {"new_item": False, "replayed": True}
    # Keys are per token: another client's key of the same spelling is another arrival.
    other = server.upload(content, b"evidence-name-r", "source=retry", OPS_TOKEN, "upload-0001")
    assert other.body["acquisition_id"] != first.body["acquisition_id"]
    assert not other.body["replayed"]
    # The same key for other bytes is the client's mistake, said aloud and recorded.
    wrong = server.upload(b"other bytes", b"evidence-name-r", "source=retry", key="upload-0001")
    assert wrong.status == 409
    store = server.open_store()
    try:
        with store.database.reader.connect() as connection:
            arrivals = (
                connection.execute(
                    sa.select(acquisitions.c.operator).where(acquisitions.c.source == "retry")
                )
                .scalars()
                .all()
            )
    finally:
        store.close()
    assert sorted(arrivals) == ["api:intake", "api:ops"]


def test_bad_upload_headers_are_refused_as_bad_input(server: Server) -> None:
    assert (
        server.call("POST", "/v1/items/upload?source=phone", b"bytes", headers={}).status == 422
    )  # no name
    reply = server.upload(b"bytes", b"n", "source=phone", key="spaces are not allowed")
    assert reply.status == 422
    assert server.upload(b"bytes", b"n", "source=phone&mtime=2024-03-05T14:30:15").status == 422
    assert server.upload(b"bytes", b"n", "source=phone&priority=99999999999").status == 422


# --- results, status, operations -------------------------------------------------------------


def test_item_is_what_show_gives(server: Server) -> None:
    content = os.urandom(1024)
    sha256 = server.upload(content, b"evidence-name-show", "source=show").body["sha256"]
    reply = server.call("GET", f"/v1/items/{sha256.upper()}")
    store = server.open_store()
    try:
        assert reply.body == store.show(sha256, Plan.default().current_keys())
    finally:
        store.close()
    assert server.call("GET", f"/v1/items/{'0' * 64}").status == 404
    assert server.call("GET", "/v1/items/not-a-hash").status == 422


def test_status_of_everything_and_of_one_request(server: Server) -> None:
    server.upload(os.urandom(512), b"evidence-name-s", "source=status&request=RFA-status")
    everything = server.call("GET", "/v1/status")
    assert everything.status == 200
    assert everything.body["items"] >= 1
    assert set(everything.body["stages"]) == set(Plan.default().stages)
    one = server.call("GET", "/v1/status?request=RFA-status")
    assert one.status == 200
    assert one.body["items"] == 1
    assert one.body["stages"]["probe"] == {"queued": 1}
    assert one.body["request"]["ref"] == "RFA-status"
    assert one.body["request"]["created_by"] == "qarina-ingest@api:intake"
    assert one.body["progress"]["request"] == "RFA-status"
    assert one.body["progress"]["items"]["total"] == 1
    assert everything.body["progress"] is None
    assert server.call("GET", "/v1/status?request=RFA-none").status == 404


def _custody(server: Server, action: str) -> list[tuple[str, dict[str, Any]]]:
    store = server.open_store()
    try:
        with store.database.reader.connect() as connection:
            rows = connection.execute(
                sa.select(custody_events.c.actor, custody_events.c.details)
                .where(custody_events.c.action == action)
                .order_by(custody_events.c.seq)
            ).all()
    finally:
        store.close()
    return [(row.actor, json.loads(row.details)) for row in rows]


def test_operations_are_custody_events_naming_the_token(server: Server) -> None:
    sha256 = server.upload(os.urandom(700), b"evidence-name-o", "source=ops&request=RFA-ops").body[
        "sha256"
    ]
    store = server.open_store()
    try:
        with store.database.writer.begin() as connection:
            connection.execute(
                sa.update(jobs)
                .where(jobs.c.sha256 == sha256)
                .values(state="failed", error_reason="tool_crash", attempts=1)
            )
    finally:
        store.close()
    assert (
        server.call(
            "POST", "/v1/requeue", {"note": "new ffmpeg", "stage": "nope"}, OPS_TOKEN
        ).status
        == 404
    )
    assert (
        server.call(
            "POST", "/v1/requeue", {"note": "new ffmpeg", "request": "RFA-none"}, OPS_TOKEN
        ).status
        == 404
    )
    reply = server.call(
        "POST", "/v1/requeue", {"note": "new ffmpeg", "request": "RFA-ops"}, OPS_TOKEN
    )
    assert reply.body == {"requeued": 1}
    assert _custody(server, "requeue")[-1][0] == "qarina-requeue@api:ops"
    assert _custody(server, "requeue")[-1][1]["reason"] == "new ffmpeg"

    paused = server.call("POST", "/v1/pause", {"reason": "disk swap"}, OPS_TOKEN)
    assert paused.body["paused"] and paused.body["changed"]
    assert paused.body["by"] == "qarina-pause@api:ops"
    assert server.call("GET", "/v1/status").body["paused"]["reason"] == "disk swap"
    resumed = server.call("POST", "/v1/resume", None, OPS_TOKEN)
    assert resumed.body == {
        "paused": False, "reason": None, "since": None, "by": None, "changed": True,
    }  # fmt: skip
    assert [actor for actor, _ in _custody(server, "pause")][-1] == "qarina-pause@api:ops"
    assert [actor for actor, _ in _custody(server, "resume")][-1] == "qarina-resume@api:ops"

    made = server.call(
        "POST",
        "/v1/requests",
        {"ref": "RFA-new", "priority": 4, "deadline": "2027-01-31T17:00:00+01:00"},
        OPS_TOKEN,
    )
    assert made.body["deadline"] == "2027-01-31T16:00:00Z"
    assert made.body["created_by"] == "qarina-request@api:ops"
    assert (
        server.call(
            "POST", "/v1/requests", {"ref": "RFA-naive", "deadline": "2027-01-31T17:00:00"}
        ).status
        == 422
    )
    raised = server.call(
        "POST", "/v1/requests/priority", {"ref": "RFA-ops", "priority": 90}, OPS_TOKEN
    )
    assert raised.body == {"ref": "RFA-ops", "priority": 90, "queued_jobs_changed": 1}
    assert _custody(server, "request_priority")[-1] == (
        "qarina-request@api:ops",
        {"ref": "RFA-ops", "priority": 90, "previous": 0, "queued_jobs_changed": 1},
    )
    assert (
        server.call("POST", "/v1/requests/priority", {"ref": "RFA-none", "priority": 1}).status
        == 404
    )


def test_search_and_dupes_answer(server: Server) -> None:
    content = os.urandom(1500)
    for source, token in (("dupes-a", INTAKE_TOKEN), ("dupes-b", OPS_TOKEN)):
        assert server.upload(content, b"evidence-name-d", f"source={source}", token).status == 200
    reply = server.call("GET", "/v1/search?q=%D8%B3%D9%84%D8%A7%D9%85&limit=5")
    assert (reply.status, reply.body) == (200, [])
    reply = server.call("GET", "/v1/dupes")
    assert reply.status == 200
    assert reply.body["clusters"] == []
    # The bytes uploaded twice (under two tokens, from two sources) are an exact duplicate.
    assert all(summary["acquisitions"] > 1 for summary in reply.body["exact"])
    (mine,) = [s for s in reply.body["exact"] if s["sha256"] == hashlib.sha256(content).hexdigest()]
    assert (mine["acquisitions"], mine["sources"]) == (2, ["dupes-a", "dupes-b"])


# --- the served OpenAPI, fuzzed --------------------------------------------------------------


@pytest.mark.parametrize("mode", list(GenerationMode), ids=str)
def test_no_operation_answers_with_a_server_error(server: Server, mode: GenerationMode) -> None:
    """Schemathesis generates requests for every operation of the served OpenAPI, valid ones
    and (negative mode) ones that break it; none may end in a 5xx. A few examples each keep
    the run to seconds."""
    auth = {"Authorization": f"Bearer {INTAKE_TOKEN}"}
    served = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=auth)
    operations = [result.ok() for result in served.get_all_operations()]
    assert len(operations) == 11
    for operation in operations:

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=5,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def answers_without_a_server_error(case: Any) -> None:
            case.call_and_validate(base_url=server.url, headers=auth, checks=[not_a_server_error])

        answers_without_a_server_error()


# --- the streaming put behind uploads --------------------------------------------------------


def test_put_stream_stores_like_put(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    content = os.urandom(100_000)
    source = tmp_path / "f"
    source.write_bytes(content)
    pieces = [content[i : i + 7000] for i in range(0, len(content), 7000)]
    streamed = blobs.put_stream([b"", *pieces, b""], max_bytes=len(content))
    assert (streamed.sha256, streamed.size_bytes, streamed.created) == (
        hashlib.sha256(content).hexdigest(), len(content), True,
    )  # fmt: skip
    assert blobs.put(source) == type(streamed)(streamed.sha256, len(content), False)
    assert not blobs.path_for(streamed.sha256).stat().st_mode & 0o222


def test_put_stream_stops_at_the_cap_and_when_its_source_fails(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    read: list[int] = []

    def pieces() -> Iterator[bytes]:
        for number in range(100):
            read.append(number)
            yield b"x" * 1000

    with pytest.raises(BlobTooLarge):
        blobs.put_stream(pieces(), max_bytes=2500)
    assert read == [0, 1, 2]  # stopped at the piece that passed the cap

    def broken() -> Iterator[bytes]:
        yield b"partial"
        raise ConnectionResetError

    with pytest.raises(ConnectionResetError):
        blobs.put_stream(broken())
    assert not list((tmp_path / "blobs" / "tmp").iterdir())
    assert not (tmp_path / "blobs" / "sha256").exists()
