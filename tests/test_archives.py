"""Archives arriving by any route expand into items of their own, and hostile ones expand into
nothing worse than a recorded refusal."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import lzma
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

from evidence import jobs
from evidence.schema import acquisitions, archive_members, custody_events, items, results
from evidence.schema import jobs as jobs_table
from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.samples import archives, audio, hostile, photos
from tests.flows import run_plan
from tests.stage_contract import StageContract
from workers.archives import ZIP, ExpandConfig, ExpandResult, ExpandStage, archive_format
from workers.base import FailureReason, Kind, StageError, StageInput, StageOutput

#: An Arabic file name as an old Windows tool writes it into a zip: cp1256 bytes, not UTF-8.
CP1256_NAME = "صورة".encode("cp1256") + b".png"
SECRET = "witness-abu-karim"

Builder = Callable[[Path, dict[str | bytes, Path]], Path]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two photos and a WhatsApp voice note, made once for the module."""
    folder = tmp_path_factory.mktemp("media")
    return {
        "jpeg": photos.striped(folder / "a.jpg", size=(64, 48), exif=photos.exif_bytes()),
        "png": photos.striped(folder / "b.png", size=(64, 48), image_format="PNG"),
        "voice": audio.speech(folder / "note.opus", voice_format="whatsapp-opus"),
    }


def _item(path: Path, depth: int = 0) -> StageInput:
    return StageInput("0" * 64, path, Kind.ARCHIVE, depth=depth)


def _expand(
    path: Path, workdir: Path, config: ExpandConfig | None = None, depth: int = 0
) -> StageOutput[ExpandResult]:
    workdir.mkdir(exist_ok=True)
    return ExpandStage(config).run(_item(path, depth), workdir)


def _refusal(path: Path, workdir: Path, config: ExpandConfig | None = None) -> StageError:
    with pytest.raises(StageError) as caught:
        _expand(path, workdir, config)
    return caught.value


def _paths(result: ExpandResult) -> list[bytes]:
    return [bytes.fromhex(member.path_hex) for member in result.members]


class TestExpandContract(StageContract):
    stage_class = ExpandStage
    config: ClassVar[ExpandConfig] = ExpandConfig()
    expected_name = "expand"

    def supported_item(self, tmp_path: Path) -> StageInput:
        photo = photos.striped(tmp_path / "photo.jpg", size=(64, 48))
        return _item(archives.zip_archive(tmp_path / "item", {"DCIM/photo.jpg": photo}))

    def unsupported_item(self, tmp_path: Path) -> StageInput:
        return _item(hostile.html_page(tmp_path / "export.zip"))


def _gnu_tar(path: Path, members: dict[str | bytes, Path]) -> Path:
    return archives.tar_archive(path, members, compression="", tar_format=tarfile.GNU_FORMAT)


def _xz_tar(path: Path, members: dict[str | bytes, Path]) -> Path:
    return archives.tar_archive(path, members, compression="xz")


@pytest.mark.parametrize("build", [archives.zip_archive, archives.tar_archive, _xz_tar, _gnu_tar])
def test_members_are_written_under_neutral_names_with_their_hashes(
    media: dict[str, Path], tmp_path: Path, build: Builder
) -> None:
    names: dict[str | bytes, Path] = {f"{SECRET}/a.jpg": media["jpeg"], "b.png": media["png"]}
    workdir = tmp_path / "work"
    output = _expand(build(tmp_path / "item", names), workdir)
    assert _paths(output.result) == [f"{SECRET}/a.jpg".encode(), b"b.png"]
    for member, file, source in zip(
        output.result.members, output.members, names.values(), strict=True
    ):
        content = source.read_bytes()
        assert member.sha256 == hashlib.sha256(content).hexdigest()
        assert (member.size_bytes, file.path.read_bytes()) == (len(content), content)
        assert file.inner_path == bytes.fromhex(member.path_hex)
    # Members are named by their place in the archive, never by the names it gives them.
    assert sorted(path.name for path in workdir.iterdir()) == ["member-000001", "member-000002"]
    assert output.result.total_bytes == sum(path.stat().st_size for path in names.values())
    assert (output.result.entries, output.result.refused, output.result.flags) == (2, [], [])


@pytest.mark.parametrize("build", [archives.zip_archive, archives.tar_archive, _gnu_tar])
def test_names_that_are_not_utf8_are_kept_byte_for_byte(
    media: dict[str, Path], tmp_path: Path, build: Builder
) -> None:
    arabic_utf8 = "مجلد/صورة.jpg"
    output = _expand(
        build(tmp_path / "item", {CP1256_NAME: media["png"], arabic_utf8: media["jpeg"]}),
        tmp_path / "work",
    )
    assert _paths(output.result) == [CP1256_NAME, arabic_utf8.encode()]
    assert [file.inner_path for file in output.members] == [CP1256_NAME, arabic_utf8.encode()]


def test_zip_names_without_the_utf8_flag_are_stored_as_written(
    media: dict[str, Path], tmp_path: Path
) -> None:
    # The sample really holds the cp1256 bytes, unflagged, as an old Windows tool writes them.
    path = archives.zip_archive(tmp_path / "item", {CP1256_NAME: media["png"]})
    assert CP1256_NAME in path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        assert not archive.infolist()[0].flag_bits & 0x800


def test_path_traversal_tar_refuses_and_records_every_escape(tmp_path: Path) -> None:
    workdir = tmp_path / "scratch" / "work"
    workdir.parent.mkdir()
    output = _expand(hostile.traversal_tar(tmp_path / "item", b"notes"), workdir)
    refused = {bytes.fromhex(entry.path_hex): entry.reason for entry in output.result.refused}
    assert refused == {
        b"../evil": "parent_path",
        b"/etc/x": "absolute_path",
        b"link": "symlink",
        b"hard": "hardlink",
        b"dev/sda": "device",
        b"pipe": "fifo",
    }
    assert set(refused) == {name.encode() for name in hostile.TRAVERSAL_ENTRIES}
    assert _paths(output.result) == [b"notes/ok.txt"]
    assert output.members[0].path.read_bytes() == b"notes"
    assert output.result.entries == 7
    # Nothing was written anywhere but the one member, under its neutral name.
    assert sorted(path.name for path in workdir.iterdir()) == ["member-000001"]
    assert [path.name for path in workdir.parent.iterdir()] == ["work"]


def test_encrypted_zip_members_are_refused_and_the_rest_extracted(tmp_path: Path) -> None:
    output = _expand(hostile.encrypted_zip(tmp_path / "item", b"payload"), tmp_path / "work")
    assert [(bytes.fromhex(e.path_hex), e.reason) for e in output.result.refused] == [
        (b"secret.txt", "encrypted")
    ]
    assert _paths(output.result) == [b"open.txt"]


def test_a_path_held_twice_keeps_the_first_and_records_the_second(tmp_path: Path) -> None:
    path = archives.appended_tar(tmp_path / "item", "chat.txt", [b"first", b"edited"])
    output = _expand(path, tmp_path / "work")
    assert [file.path.read_bytes() for file in output.members] == [b"first"]
    assert [entry.reason for entry in output.result.refused] == ["duplicate_path"]


@pytest.mark.parametrize("build", [archives.zip_archive, archives.tar_archive])
def test_directories_are_skipped(media: dict[str, Path], tmp_path: Path, build: Builder) -> None:
    folder = tmp_path / "DCIM"
    folder.mkdir()
    path = build(tmp_path / "item", {"DCIM": folder, "DCIM/a.jpg": media["jpeg"]})
    output = _expand(path, tmp_path / "work")
    assert (_paths(output.result), output.result.entries) == ([b"DCIM/a.jpg"], 2)
    assert output.result.refused == []


@pytest.mark.parametrize(
    ("build", "folders"),
    [
        (hostile.folders_with_data_zip, [b"DCIM/", b"notes"]),
        (hostile.folder_with_size_tar, [b"DCIM"]),
    ],
)
def test_directories_holding_data_are_refused_and_recorded(
    tmp_path: Path, build: Callable[[Path, bytes], Path], folders: list[bytes]
) -> None:
    """A folder's bytes would never reach the store, and no one would know they were there."""
    output = _expand(build(tmp_path / "item", b"hidden"), tmp_path / "work")
    assert [(bytes.fromhex(e.path_hex), e.reason) for e in output.result.refused] == [
        (folder, "directory_with_data") for folder in folders
    ]
    assert _paths(output.result) == [b"ok.txt"]
    assert output.members[0].path.read_bytes() == b"hidden"
    assert output.result.entries == len(folders) + 1


@pytest.mark.parametrize("bomb", [hostile.zip_bomb, hostile.tar_bomb])
def test_a_bomb_fails_final_resource_limit_under_the_default_caps(
    tmp_path: Path, bomb: Callable[[Path, int], Path]
) -> None:
    # 32 MiB of zeros in about 32 KiB: past the 100:1 ratio and the 16 MiB it is judged above.
    path = bomb(tmp_path / "item", 32 << 20)
    assert path.stat().st_size < 64 << 10
    workdir = tmp_path / "work"
    error = _refusal(path, workdir)
    assert (error.reason, error.retryable) == (FailureReason.RESOURCE_LIMIT, False)
    assert "bomb" in error.detail and "zeros" not in error.detail
    # Judged from the sizes the archive declares: not a byte was written.
    assert list(workdir.iterdir()) == []


def test_ratio_cap_comes_from_config_and_spares_real_media(
    media: dict[str, Path], tmp_path: Path
) -> None:
    strict = ExpandConfig(max_ratio=5.0, ratio_exempt_bytes=0)
    error = _refusal(hostile.zip_bomb(tmp_path / "bomb", 4 << 20), tmp_path / "bomb-work", strict)
    assert (error.reason, error.retryable) == (FailureReason.RESOURCE_LIMIT, False)
    # Photos and voice notes are compressed already: a zip of them stays near 1:1.
    real = archives.zip_archive(
        tmp_path / "real", {"a.jpg": media["jpeg"], "n.opus": media["voice"]}
    )
    assert len(_expand(real, tmp_path / "real-work", strict).members) == 2


@pytest.mark.parametrize(
    ("config", "cap"),
    [
        (ExpandConfig(max_entries=2), "entries"),
        (ExpandConfig(max_member_bytes=1000), "member"),
        (ExpandConfig(max_total_bytes=1000), "in all"),
    ],
)
@pytest.mark.parametrize("build", [archives.zip_archive, archives.tar_archive])
def test_caps_on_entries_and_bytes(
    media: dict[str, Path], tmp_path: Path, build: Builder, config: ExpandConfig, cap: str
) -> None:
    members: dict[str | bytes, Path] = {"a.jpg": media["jpeg"], "b.png": media["png"]}
    members["n.opus"] = media["voice"]
    error = _refusal(build(tmp_path / "item", members), tmp_path / "work", config)
    assert (error.reason, error.retryable) == (FailureReason.RESOURCE_LIMIT, False)
    assert cap in error.detail


@pytest.mark.parametrize(
    ("kind", "header_bytes", "headers"),
    [
        (tarfile.GNUTYPE_LONGNAME, 64 << 20, 1),
        (tarfile.GNUTYPE_LONGLINK, 64 << 20, 1),
        (tarfile.XHDTYPE, 64 << 20, 1),
        (tarfile.XGLTYPE, 64 << 20, 1),
        # Each under the cap, past it together: tarfile holds every one while it reads on.
        (tarfile.GNUTYPE_LONGNAME, 768 << 10, 3),
    ],
)
def test_a_tar_header_bomb_is_refused_before_it_is_read(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: bytes,
    header_bytes: int,
    headers: int,
) -> None:
    """tarfile reads a long name or a pax header in one read of its declared size before the
    stage sees the entry: a few KB of xz could take a worker's memory before any cap."""
    path = hostile.tar_header_bomb(tmp_path / "item", header_bytes, kind, headers=headers)
    assert path.stat().st_size < 16 << 10
    reads: list[int] = []
    read = lzma.LZMAFile.read

    def measured(self: lzma.LZMAFile, size: int = -1) -> bytes:
        data = read(self, size)
        reads.append(len(data))
        return data

    monkeypatch.setattr(lzma.LZMAFile, "read", measured)
    workdir = tmp_path / "work"
    error = _refusal(path, workdir)
    assert (error.reason, error.retryable) == (FailureReason.RESOURCE_LIMIT, False)
    assert "headers" in error.detail
    # No read got past the 1 MiB cap, nor did all of them together: nothing large was made.
    assert max(reads) <= 1 << 20 and sum(reads) <= 1 << 20
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_and_pax_records_of_real_files_pass_the_header_cap(
    tmp_path: Path, tar_format: int
) -> None:
    # A name and a link target as long as Linux allows, an extended attribute as large.
    name = ("a" * 255 + "/") * 15 + "b" * 252 + ".txt"
    assert len(name) == 4096
    path = tmp_path / "item"
    with tarfile.open(path, "w:xz", format=tar_format) as archive:
        note = tarfile.TarInfo(name)
        note.size = 5
        note.pax_headers = {"SCHILY.xattr.user.note": "x" * (64 << 10)}
        archive.addfile(note, io.BytesIO(b"notes"))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, name
        archive.addfile(link)
    output = _expand(path, tmp_path / "work")
    assert _paths(output.result) == [name.encode()]
    assert [entry.reason for entry in output.result.refused] == ["symlink"]


def test_an_archive_at_the_depth_cap_is_refused(media: dict[str, Path], tmp_path: Path) -> None:
    path = archives.zip_archive(tmp_path / "item", {"a.jpg": media["jpeg"]})
    assert len(_expand(path, tmp_path / "ok", ExpandConfig(max_depth=2), depth=1).members) == 1
    with pytest.raises(StageError) as caught:
        _expand(path, tmp_path / "deep", ExpandConfig(max_depth=2), depth=2)
    assert (caught.value.reason, caught.value.retryable) == (FailureReason.RESOURCE_LIMIT, False)


def test_time_budget_is_a_retryable_timeout(media: dict[str, Path], tmp_path: Path) -> None:
    path = archives.tar_archive(tmp_path / "item", {"a.jpg": media["jpeg"]})
    error = _refusal(path, tmp_path / "work", ExpandConfig(time_budget_s=0.0))
    assert (error.reason, error.retryable) == (FailureReason.TOOL_TIMEOUT, True)


@pytest.mark.parametrize("build", [archives.zip_archive, archives.tar_archive, _xz_tar, _gnu_tar])
def test_truncated_archives_are_corrupt_media(
    media: dict[str, Path], tmp_path: Path, build: Builder
) -> None:
    whole = build(tmp_path / "whole", {f"{SECRET}.jpg": media["jpeg"], "n.opus": media["voice"]})
    # Cut inside the members' data: a plain tar's closing padding is not missed when cut.
    cut = hostile.truncated_copy(whole, tmp_path / "item", keep=0.3)
    error = _refusal(cut, tmp_path / "work")
    assert (error.reason, error.retryable) == (FailureReason.CORRUPT_MEDIA, False)
    assert SECRET not in error.detail


def _gnu_tar_bytes(media: dict[str, Path], tmp_path: Path) -> tuple[bytes, list[tarfile.TarInfo]]:
    path = _gnu_tar(tmp_path / "whole", {"a.jpg": media["jpeg"], "b.png": media["png"]})
    with tarfile.open(path) as archive:
        return path.read_bytes(), archive.getmembers()


def test_a_damaged_header_inside_a_tar_is_corrupt_media(
    media: dict[str, Path], tmp_path: Path
) -> None:
    # tarfile stops at a damaged header as at the end: the stage must tell them apart.
    data, members = _gnu_tar_bytes(media, tmp_path)
    damaged = bytearray(data)
    damaged[members[1].offset : members[1].offset + 512] = b"\xa5" * 512
    (tmp_path / "item").write_bytes(bytes(damaged))
    error = _refusal(tmp_path / "item", tmp_path / "work")
    assert error.reason is FailureReason.CORRUPT_MEDIA


def test_a_tar_without_its_closing_blocks_is_expanded_and_flagged(
    media: dict[str, Path], tmp_path: Path
) -> None:
    data, members = _gnu_tar_bytes(media, tmp_path)
    last = members[-1]
    (tmp_path / "item").write_bytes(data[: last.offset_data + (last.size + 511) // 512 * 512])
    output = _expand(tmp_path / "item", tmp_path / "work")
    assert (len(output.members), output.result.flags) == (2, ["no_end_marker"])


# ---- through the store: ingest, run, show, custody ----


def _count(store: Store, table: sa.Table) -> int:
    with store.database.reader.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _custody(store: Store, action: str, stage: str | None = None) -> list[dict[str, Any]]:
    """The details of every custody event of `action` (of `stage`, when given)."""
    where = [custody_events.c.action == action]
    if stage is not None:
        where.append(custody_events.c.stage == stage)
    with store.database.reader.connect() as connection:
        texts = connection.execute(sa.select(custody_events.c.details).where(*where)).scalars()
        return [json.loads(text) for text in texts]


def _member_ingests(store: Store) -> int:
    """Custody events that registered a member of an archive."""
    return sum(1 for details in _custody(store, "ingest") if "from_archive" in details)


def _footprint(store: Store) -> tuple[int, ...]:
    tables = (items, acquisitions, archive_members, results)
    return (*(_count(store, table) for table in tables), _member_ingests(store))


def _ingest(
    store: Store, config: QarinaConfig, plan: Plan, folder: Path, request: str | None = None
) -> list[str]:
    summary = ingest_paths(
        store, plan, config, [folder], source="NGO-A drive 3", priority=5, request_ref=request
    )
    run_plan(store, plan, config)
    return summary.sha256s


def _shown(store: Store, plan: Plan, sha256: str) -> dict[str, Any]:
    record = store.show(sha256, plan.current_keys())
    assert record is not None
    return record


def test_zip_and_tar_gz_members_become_processed_items(
    store: Store, config: QarinaConfig, media: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "intake"
    folder.mkdir()
    jpeg_path = f"WhatsApp/{SECRET}.jpg".encode()
    zipped = archives.zip_archive(
        folder / "export.zip",
        {
            jpeg_path: media["jpeg"],
            "WhatsApp/PTT-0001.opus": media["voice"],
            CP1256_NAME: media["png"],
        },
    )
    tarred = archives.tar_archive(
        folder / "transfer.tar.gz", {"DCIM/copy.jpg": media["jpeg"], "DCIM/b.png": media["png"]}
    )
    plan = Plan.default(settings=config)
    shas = _ingest(store, config, plan, folder, request="RFA-7")
    assert store.status().open_jobs == 0
    by_path = {folder / "export.zip": zipped, folder / "transfer.tar.gz": tarred}
    assert len(shas) == len(by_path)
    sha_of = {hashlib.sha256(path.read_bytes()).hexdigest(): path for path in by_path.values()}
    jpeg_sha = hashlib.sha256(media["jpeg"].read_bytes()).hexdigest()
    png_sha = hashlib.sha256(media["png"].read_bytes()).hexdigest()
    voice_sha = hashlib.sha256(media["voice"].read_bytes()).hexdigest()

    for archive_sha, path in sha_of.items():
        shown = _shown(store, plan, archive_sha)
        assert shown["kind"] == "archive" and set(shown["results"]) == {"probe", "expand"}
        held = {
            bytes.fromhex(m["path_hex"]): (m["sha256"], m["depth"])
            for m in shown["archive_members"]
        }
        expected = (
            {jpeg_path: jpeg_sha, b"WhatsApp/PTT-0001.opus": voice_sha, CP1256_NAME: png_sha}
            if path == zipped
            else {b"DCIM/copy.jpg": jpeg_sha, b"DCIM/b.png": png_sha}
        )
        assert held == {inner: (sha, 1) for inner, sha in expected.items()}

    # Members are items like any other: probed, processed, with the archive's source.
    photo = _shown(store, plan, jpeg_sha)
    assert photo["kind"] == "photo"
    assert {"probe", "metadata", "hashes"} <= set(photo["results"])
    assert {(a["source"], a["request_ref"], a["priority"]) for a in photo["acquisitions"]} == {
        ("NGO-A drive 3", "RFA-7", 5)
    }
    assert sorted(bytes.fromhex(a["original_name_hex"]) for a in photo["acquisitions"]) == [
        b"copy.jpg",
        f"{SECRET}.jpg".encode(),
    ]
    assert {a["original_path"] for a in photo["acquisitions"]} == {
        "DCIM/copy.jpg",
        jpeg_path.decode(),
    }
    assert sorted((f["path"], f["depth"]) for f in photo["found_in_archives"]) == [
        ("DCIM/copy.jpg", 1),
        (jpeg_path.decode(), 1),
    ]
    voice = _shown(store, plan, voice_sha)
    assert voice["kind"] == "audio" and {"metadata", "transcript"} <= set(voice["results"])
    # The cp1256 name survives byte for byte; shown as text with its odd bytes escaped.
    png = _shown(store, plan, png_sha)
    zipped_sha = hashlib.sha256(zipped.read_bytes()).hexdigest()
    found = [f for f in png["found_in_archives"] if f["archive_sha256"] == zipped_sha]
    assert [f["path_hex"] for f in found] == [CP1256_NAME.hex()]
    assert found[0]["path"] == CP1256_NAME.decode("utf-8", "backslashreplace")
    assert CP1256_NAME.hex() in {a["original_name_hex"] for a in png["acquisitions"]}
    assert store.verify(fixity=True, actor="test").ok
    assert _member_ingests(store) == 5

    # Running again stores nothing; nor does an expansion committed again (a retried job).
    before = _footprint(store)
    run_plan(store, plan, config)
    assert _footprint(store) == before
    with store.database.writer.begin() as connection:
        connection.execute(
            sa.update(jobs_table).where(jobs_table.c.stage == "expand").values(state=jobs.QUEUED)
        )
    run_plan(store, plan, config)
    assert _footprint(store) == before
    # The two expansions ran again, and found their results stored.
    stored = [details["already_stored"] for details in _custody(store, "result", "expand")]
    assert sorted(stored) == [False, False, True, True]
    assert store.verify(fixity=True, actor="test").ok


def _failures(shown: dict[str, Any]) -> list[tuple[str, str, str, int]]:
    return [(f["stage"], f["reason"], f["state"], f["attempts"]) for f in shown["failures"]]


def _nested_plan(config: QarinaConfig, max_depth: int) -> Plan:
    plan = Plan.default(settings=config)
    expand = ExpandStage(ExpandConfig(max_depth=max_depth))
    return dataclasses.replace(plan, stages={**plan.stages, "expand": expand})


def test_nested_archives_expand_to_the_depth_cap_and_no_further(
    store: Store, config: QarinaConfig, media: dict[str, Path], tmp_path: Path
) -> None:
    deepest = archives.zip_archive(tmp_path / "deepest.zip", {"IMG.jpg": media["jpeg"]})
    deep = archives.tar_archive(tmp_path / "deep.tar.gz", {"attached.zip": deepest})
    folder = tmp_path / "intake"
    folder.mkdir()
    archives.zip_archive(folder / "case.zip", {"export/deep.tar.gz": deep})
    plan = _nested_plan(config, max_depth=2)
    [case_sha] = _ingest(store, config, plan, folder)
    deep_sha = hashlib.sha256(deep.read_bytes()).hexdigest()
    deepest_sha = hashlib.sha256(deepest.read_bytes()).hexdigest()

    deep_shown = _shown(store, plan, deep_sha)
    assert deep_shown["kind"] == "archive" and "expand" in deep_shown["results"]
    assert [
        (f["archive_sha256"], f["path"], f["depth"]) for f in deep_shown["found_in_archives"]
    ] == [(case_sha, "export/deep.tar.gz", 1)]
    assert [(m["sha256"], m["depth"]) for m in deep_shown["archive_members"]] == [(deepest_sha, 2)]
    # Two archives deep with a cap of two: recorded as an item, refused as a bomb would be.
    deepest_shown = _shown(store, plan, deepest_sha)
    assert deepest_shown["acquisitions"][0]["source"] == "NGO-A drive 3"
    assert _failures(deepest_shown) == [("expand", "resource_limit", "failed", 1)]
    assert deepest_shown["archive_members"] == []
    assert _count(store, items) == 3
    assert store.verify(fixity=True, actor="test").ok


def test_a_bomb_and_a_traversal_tar_through_the_pipeline(
    store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    folder = tmp_path / "intake"
    folder.mkdir()
    bomb = hostile.zip_bomb(folder / "photos.zip", 32 << 20)
    traversal = hostile.traversal_tar(folder / "backup.tar", b"notes")
    plan = Plan.default(settings=config)
    _ingest(store, config, plan, folder)
    assert store.status().open_jobs == 0

    shown = _shown(store, plan, hashlib.sha256(bomb.read_bytes()).hexdigest())
    assert _failures(shown) == [("expand", "resource_limit", "failed", 1)]
    assert shown["archive_members"] == []
    tar_shown = _shown(store, plan, hashlib.sha256(traversal.read_bytes()).hexdigest())
    assert [m["path"] for m in tar_shown["archive_members"]] == ["notes/ok.txt"]
    refused = tar_shown["results"]["expand"]["data"]["refused"]
    assert sorted(bytes.fromhex(entry["path_hex"]).decode() for entry in refused) == sorted(
        hostile.TRAVERSAL_ENTRIES
    )
    # Nothing of the bomb was half registered: two archives and the one harmless member.
    assert _count(store, items) == 3
    assert _count(store, archive_members) == 1
    assert _member_ingests(store) == 1
    blobs = [path for path in (config.blob_root / "sha256").rglob("*") if path.is_file()]
    assert len(blobs) == 3
    assert store.verify(fixity=True, actor="test").ok


class _Pipe(io.RawIOBase):
    """Somewhere to write that cannot seek, as a pipe: zipfile then puts each entry's sizes
    in a data descriptor after its data, as the jar tool does."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.data += data
        return len(data)


def _zip_of(path: Path, entries: dict[str, str], *, deflated: bool = False) -> Path:
    """A zip of `entries` (name -> text) in order: stored, or deflated and streamed as the
    jar tool writes them."""
    pipe = _Pipe()
    target: Any = pipe if deflated else path
    method = zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED
    with zipfile.ZipFile(target, "w", method) as archive:
        for name, text in entries.items():
            archive.writestr(name, text)
    if deflated:
        path.write_bytes(bytes(pipe.data))
    return path


_MANIFEST = {"META-INF/MANIFEST.MF": "Manifest-Version: 1.0\n", "a/Main.class": "\xca\xfe"}


@pytest.mark.parametrize(
    ("entries", "deflated", "label"),
    [
        (
            {"[Content_Types].xml": "<Types/>", "word/document.xml": "<w:document/>"},
            False,
            "office document (OOXML)",
        ),
        (
            {"mimetype": "application/vnd.oasis.opendocument.text", "content.xml": "<o/>"},
            False,
            "OpenDocument or EPUB document",
        ),
        (
            {"mimetype": "application/epub+zip", "META-INF/container.xml": "<container/>"},
            False,
            "OpenDocument or EPUB document",
        ),
        (_MANIFEST, False, "Java or Android package"),
        # The jar tool writes the META-INF/ folder first, deflated, sizes after the data.
        ({"META-INF/": "", **_MANIFEST}, True, "Java or Android package"),
        ({"AndroidManifest.xml": "\x03\x00", "classes.dex": "dex"}, False, "Android package"),
    ],
)
def test_documents_and_programs_in_zip_form_are_not_expanded(
    tmp_path: Path, entries: dict[str, str], deflated: bool, label: str
) -> None:
    """A Word file or an APK is a zip by its bytes but one piece of evidence: it is
    described, not opened into its parts."""
    from workers.probe import ProbeStage

    path = _zip_of(tmp_path / "document", entries, deflated=deflated)
    with pytest.raises(StageError) as refused:
        ProbeStage().run(StageInput("0" * 64, path, Kind.OTHER), tmp_path)
    assert (refused.value.reason, refused.value.detail) == (FailureReason.UNSUPPORTED_TYPE, label)


@pytest.mark.parametrize(
    ("entries", "deflated"),
    [
        # Folders an office file holds are folders a case zip may start with too.
        ({"word/statement.docx": "x", "photos/a.jpg": "x"}, False),
        ({"xl/": "", "xl/ledger.csv": "x"}, False),
        ({"ppt/slides.pdf": "x"}, False),
        ({"docProps/readme.txt": "x"}, False),
        ({"_rels/notes.txt": "x"}, False),
        ({"META-INF/container.xml": "x"}, False),
        ({"META-INF/": "", "META-INF/notes.txt": "x"}, True),
        # A file called mimetype is a marker only stored, naming an application/ type.
        ({"mimetype": "text/plain", "a.txt": "x"}, False),
        ({"mimetype": "application/epub+zip", "a.txt": "x"}, True),
    ],
)
def test_zips_that_only_start_like_documents_are_expanded(
    tmp_path: Path, entries: dict[str, str], deflated: bool
) -> None:
    path = _zip_of(tmp_path / "item", entries, deflated=deflated)
    assert archive_format(path.read_bytes()[:4096]) is ZIP
    output = _expand(path, tmp_path / "work")
    assert _paths(output.result) == [name.encode() for name in entries if not name.endswith("/")]


def test_a_later_arrival_of_an_expanded_archive_brings_its_members_again(
    store: Store, config: QarinaConfig, media: dict[str, Path], tmp_path: Path
) -> None:
    """The same export from a second source, for another request: its files are in that
    request too, and their history says so, though nothing is expanded twice."""
    inner = archives.zip_archive(tmp_path / "inner.zip", {"photo.jpg": media["jpeg"]})
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        archives.tar_archive(folder / "export.tar", {"inner.zip": inner, "b.png": media["png"]})
    plan = Plan.default(settings=config)
    _ingest(store, config, plan, first, request="RFA-1")
    ingest_paths(store, plan, config, [second], source="NGO-B", priority=9, request_ref="RFA-2")
    assert store.status(current=plan.current_keys()).open_jobs == 0  # nothing to redo
    jpeg_sha = hashlib.sha256(media["jpeg"].read_bytes()).hexdigest()
    arrivals = {
        (acquisition["source"], acquisition["request_ref"])
        for acquisition in _shown(store, plan, jpeg_sha)["acquisitions"]
    }
    assert arrivals == {("NGO-A drive 3", "RFA-1"), ("NGO-B", "RFA-2")}
    assert store.status("RFA-2").items == 4  # the tar, the inner zip and both files
    assert store.verify(fixity=False, actor="t").ok


def test_an_archive_expanded_again_under_new_caps_records_nothing_new(
    store: Store, config: QarinaConfig, media: dict[str, Path], tmp_path: Path
) -> None:
    """Reprocessing the expansion (raised caps make a new key) finds every member linked
    and acquired already: no second ingest event per member, only the new result."""
    from evidence.reprocess import Request, Selection
    from pipelines.reprocess import reprocess_stage

    folder = tmp_path / "intake"
    folder.mkdir()
    archives.zip_archive(folder / "export.zip", {"a.jpg": media["jpeg"], "b.png": media["png"]})
    plan = Plan.default(settings=config)
    _ingest(store, config, plan, folder)
    before = _footprint(store)
    raised = dataclasses.replace(
        plan, stages={**plan.stages, "expand": ExpandStage(ExpandConfig(max_entries=200_000))}
    )
    request = Request(Selection(), None, 3, "tester", "entry cap raised")
    assert reprocess_stage(store, raised, "expand", request).queued == 1
    run_plan(store, raised, config)
    items_, acquired, linked, stored, ingests = _footprint(store)
    assert (items_, acquired, linked, ingests) == (before[0], before[1], before[2], before[4])
    assert stored == before[3] + 1  # the new expansion's result, beside the superseded one


def test_archives_that_hold_each_other_bring_an_arrival_once(
    store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    """Links that loop (a zip quine holds itself; two archives may hold each other) must not
    send a new arrival round them for ever."""
    from evidence.store import Acquisition

    shas = []
    for name, width in (("a", 16), ("b", 24)):
        blob = store.blobs.put(photos.striped(tmp_path / f"{name}.jpg", size=(width, 16)))
        arrival = Acquisition("first", name.encode(), name.encode(), "tester")
        store.register(blob, arrival, [], "t", 3)
        shas.append(blob.sha256)
    with store.database.writer.begin() as connection:
        result_id = connection.execute(
            sa.insert(results).values(
                sha256=shas[0],
                stage="expand",
                stage_version="1",
                config_hash="x",
                status="ok",
                skip_reason=None,
                data={},
                data_sha256="0" * 64,
                provenance={},
                created_at=dt.datetime.now(dt.UTC),
            )
        ).inserted_primary_key[0]
        for archive, member in ((shas[0], shas[1]), (shas[1], shas[0]), (shas[0], shas[0])):
            connection.execute(
                sa.insert(archive_members).values(
                    archive_sha256=archive,
                    member_sha256=member,
                    path=b"x/" + member[:8].encode(),
                    depth=1,
                    result_id=result_id,
                )
            )
    again = store.blobs.put(tmp_path / "a.jpg")
    store.register(again, Acquisition("second", b"a", b"a", "tester"), [], "t", 3)
    plan = Plan.default(settings=config)
    sources = {
        sha: {arrival["source"] for arrival in _shown(store, plan, sha)["acquisitions"]}
        for sha in shas
    }
    assert sources == {shas[0]: {"first", "second"}, shas[1]: {"first", "second"}}
