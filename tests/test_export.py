"""Exports: a CASE/UCO bundle a court re-verifies without Qarina, and JSON lines.

A photo, a smaller copy of it (a near-duplicate), a video with speech and a voice note are
ingested and processed once (real stages, Whisper included) into a SQLite store that each test
copies; a second, photo-only flow runs on each backend.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import rdflib
from PIL import Image
from typer.testing import CliRunner

from evidence import custody
from evidence.custody import StoredEvent
from evidence.store import Store
from pipelines.cli import app
from pipelines.config import QarinaConfig
from pipelines.export import verify_bundle
from pipelines.export.bundle import (
    ExportError,
    export_case_bundle,
    verify_against_store,
)
from pipelines.export.jsonl import Selection, export_jsonl
from pipelines.plan import Plan
from pipelines.samples import audio, photos, videos
from pipelines.session import open_matcher
from tests.flows import DEFAULT_KEYS, ingest_and_run, sqlite_config_in

UCO = "https://ontology.unifiedcyberontology.org/uco/"
CASE_INVESTIGATION = rdflib.Namespace("https://ontology.caseontology.org/case/investigation/")
CORE = rdflib.Namespace(f"{UCO}core/")
OBSERVABLE = rdflib.Namespace(f"{UCO}observable/")
TYPES = rdflib.Namespace(f"{UCO}types/")
ACTION = rdflib.Namespace(f"{UCO}action/")
ANALYSIS = rdflib.Namespace(f"{UCO}analysis/")
XSD = rdflib.Namespace("http://www.w3.org/2001/XMLSchema#")
#: The standalone check runs under the system's Python, isolated: nothing of Qarina or of
#: its virtualenv on its path, as on an analyst's machine.
SYSTEM_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3"


@dataclass(frozen=True)
class Processed:
    data: Path
    items: dict[str, str]  # file name -> sha256


def _photo_and_copy(folder: Path) -> None:
    original = photos.scene_jpeg(folder / "street.jpg", seed=40)
    with Image.open(original) as image:
        image.resize((320, 240)).save(folder / "street-small.jpg", quality=60)


def _process(folder: Path, config: QarinaConfig, store: Store) -> dict[str, str]:
    ingest_and_run(store, config, folder)
    open_matcher(config, store, Plan.default(settings=config)).update("qarina-match@tester")
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.iterdir()
        if path.is_file()
    }


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Processed:
    folder = tmp_path_factory.mktemp("intake")
    _photo_and_copy(folder)
    speech = audio.speech(tmp_path_factory.mktemp("speech") / "speech.wav")
    videos.video_with_cuts(
        folder / "clip.mp4", shots=3, size="320x240", rate=25, audio=speech, preset="veryfast"
    )
    audio.speech(folder / "note.opus", voice_format="whatsapp-opus")
    data = tmp_path_factory.mktemp("processed") / "data"
    config = sqlite_config_in(data, models_dir)
    store = Store.open(config.db_url, config.blob_root)
    try:
        items = _process(folder, config, store)
    finally:
        store.close()
    return Processed(data, items)


@dataclass(frozen=True)
class Copy:
    config: QarinaConfig
    store: Store
    items: dict[str, str]

    @property
    def exported(self) -> list[str]:
        """The photo, the video and the voice note; the photo's copy stays behind, so the
        bundle links to an item it does not hold."""
        return [self.items[name] for name in ("street.jpg", "clip.mp4", "note.opus")]


@pytest.fixture
def copied(processed: Processed, tmp_path: Path, models_dir: Path) -> Iterator[Copy]:
    """A copy of the processed store, for a test to export from and record in."""
    data = tmp_path / "data"
    shutil.copytree(processed.data, data)
    config = sqlite_config_in(data, models_dir)
    store = Store.open(config.db_url, config.blob_root)
    yield Copy(config, store, processed.items)
    store.close()


def _export(copy: Copy, out: Path, **options: bool) -> Path:
    export_case_bundle(
        copy.store, DEFAULT_KEYS, copy.exported, out, "qarina-export@tester", **options
    )
    return out


def _standalone(bundle: Path) -> subprocess.CompletedProcess[str]:
    """The bundle's own script, as an analyst runs it: system Python, isolated, elsewhere."""
    return subprocess.run(
        [SYSTEM_PYTHON, "-I", str(bundle / verify_bundle.SCRIPT)],
        capture_output=True,
        text=True,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )


def _sha(value: str) -> rdflib.Literal:
    return rdflib.Literal(value, datatype=XSD.hexBinary)


def _files_hashed(graph: rdflib.Graph, sha256: str) -> set[rdflib.term.Node]:
    """The Files whose content data facet gives this SHA-256, but for the files as they
    arrived (the objects of acquisitions): the stored item, an artifact, a link's end."""
    arrivals = {
        arrived
        for action in graph.subjects(CORE.name, rdflib.Literal("acquisition"))
        for arrived in graph.objects(action, ACTION.object)
    }
    return {
        file
        for digest in graph.subjects(TYPES.hashValue, _sha(sha256))
        for facet in graph.subjects(OBSERVABLE.hash, digest)
        for file in graph.subjects(CORE.hasFacet, facet)
        if (file, rdflib.RDF.type, OBSERVABLE.File) in graph and file not in arrivals
    }


# --- the hash of a custody event --------------------------------------------------------------


def test_the_standalone_event_hash_is_the_stores(copied: Copy) -> None:
    """verify_bundle.py writes the hash again, without Qarina: byte for byte the same."""
    assert (
        tuple(field.name for field in dataclasses.fields(StoredEvent)) == verify_bundle.EVENT_FIELDS
    )
    with copied.store.database.reader.connect() as connection:
        chain = list(custody.events(connection))
    awkward = [
        StoredEvent(
            seq=2**53 + 1,
            at_iso="2026-12-06T13:24:57.188340+00:00",
            actor='qarina-ingest@"أحمد" \\ \n\t',
            action="ingest",
            item_sha256=None,
            stage=None,
            details_text=custody.canonical_json(
                {"name": "شهادة 🎥 \u200f", "n": 1.5, "none": None, "list": ["ü", 2]}
            ),
            prev_hash=custody.GENESIS_HASH,
            event_hash="",
        ),
    ]
    assert len(chain) >= 20
    for event in chain:
        assert verify_bundle.event_hash(dataclasses.asdict(event)) == event.event_hash
    for event in awkward:
        assert verify_bundle.event_hash(dataclasses.asdict(event)) == event.recomputed_hash()


# --- the CASE/UCO bundle ----------------------------------------------------------------------


def test_bundle_describes_items_results_links_and_custody(copied: Copy, tmp_path: Path) -> None:
    bundle = _export(copied, tmp_path / "bundle")
    graph = rdflib.Graph().parse(bundle / verify_bundle.GRAPH, format="json-ld")
    photo, video, note = copied.exported
    for sha256 in copied.exported:
        record = copied.store.show(sha256, DEFAULT_KEYS)
        assert record is not None
        [item] = _files_hashed(graph, sha256)
        assert (bundle / "files" / sha256).read_bytes() == copied.store.blobs.path_for(
            sha256
        ).read_bytes()
        acquisitions = set(graph.subjects(ACTION.result, item)) & set(
            graph.subjects(rdflib.RDF.type, CASE_INVESTIGATION.InvestigativeAction)
        )
        arrivals = [
            action
            for action in acquisitions
            if graph.value(action, CORE.name) == rdflib.Literal("acquisition")
        ]
        assert len(arrivals) == len(record["acquisitions"]) == 1
        [arrival] = arrivals
        performer = graph.value(arrival, ACTION.performer)
        assert str(graph.value(performer, CORE.name)) == "tester"
        started = graph.value(arrival, ACTION.startTime)
        assert isinstance(started, rdflib.Literal) and started.datatype == XSD.dateTime
        analyses = set(graph.subjects(ACTION.object, item)) & set(
            graph.subjects(rdflib.RDF.type, ANALYSIS.Analysis)
        )
        assert {str(graph.value(action, CORE.name)) for action in analyses} == {
            f"{stage} v{result['stage_version']}" for stage, result in record["results"].items()
        }
        for artifact in record["artifacts"]:
            [file] = _files_hashed(graph, artifact["sha256"])
            assert any((action, ACTION.result, file) in graph for action in analyses)
            assert (bundle / "files" / artifact["sha256"]).is_file()
        with copied.store.database.reader.connect() as connection:
            *trail, exported = custody.item_trail(connection, sha256)
        assert exported.action == "export"  # recorded after the bundle was written
        records = {
            str(graph.value(provenance, CORE.name))
            for provenance in graph.subjects(CORE.object, item)
            if (provenance, rdflib.RDF.type, CASE_INVESTIGATION.ProvenanceRecord) in graph
        }
        assert records == {f"custody event {event.seq}" for event in trail}
        values = {str(value) for value in graph.objects(None, TYPES.value)}
        assert {event.event_hash for event in trail} <= values
        assert {event.details_text for event in trail} <= values

    video_record = copied.store.show(video, DEFAULT_KEYS)
    assert video_record is not None
    keyframes = [a for a in video_record["artifacts"] if a["role"] == "keyframe"]
    assert len(keyframes) >= 2
    for role in ("transcript_vtt", "transcript_srt"):
        assert any(a["role"] == role for a in video_record["artifacts"])
    statements = {str(text) for text in graph.objects(None, CORE.statement)}
    for sha256 in (video, note):
        record = copied.store.show(sha256, DEFAULT_KEYS)
        assert record is not None
        assert record["results"]["transcript"]["data"]["text"] in statements
    payloads = {str(text) for text in graph.objects(None, OBSERVABLE.dataPayload)}
    assert custody.canonical_json(video_record["results"]["keyframes"]["data"]) in payloads

    copy_of_photo = copied.items["street-small.jpg"]
    [link] = graph.subjects(CORE.kindOfRelationship, rdflib.Literal("Near_Duplicate_Of"))
    ends = {graph.value(link, CORE.source), graph.value(link, CORE.target)}
    assert ends == _files_hashed(graph, photo) | _files_hashed(graph, copy_of_photo)
    assert not (bundle / "files" / copy_of_photo).exists()
    distance = graph.value(link, rdflib.URIRef("urn:qarina:vocabulary:distance"))
    assert isinstance(distance, rdflib.Literal) and distance.datatype == XSD.decimal
    assert float(distance) <= 31


def test_bundle_conforms_to_case_uco(copied: Copy, tmp_path: Path) -> None:
    """case-utils' own validator (SHACL shapes of CASE 1.5.0 / UCO 1.5.0), as shipped."""
    bundle = _export(copied, tmp_path / "bundle")
    validator = Path(sys.executable).parent / "case_validate"
    result = subprocess.run(
        [str(validator), str(bundle / verify_bundle.GRAPH)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Conforms: True" in result.stdout


def test_exporting_again_gives_the_same_graph(copied: Copy, tmp_path: Path) -> None:
    first = rdflib.Graph().parse(_export(copied, tmp_path / "one") / "bundle.jsonld")
    second = rdflib.Graph().parse(_export(copied, tmp_path / "two") / "bundle.jsonld")
    assert len(first) > 500
    assert not first - second
    # What the second adds is the first export's custody: its events, and who made them.
    with copied.store.database.reader.connect() as connection:
        exports = [
            event
            for sha256 in copied.exported
            for event in custody.item_trail(connection, sha256)
            if event.action == "export"
        ]
    assert len(exports) == 2 * len(copied.exported)
    added = {str(subject) for subject, _, _ in second - first}
    assert added
    assert all(
        subject.startswith(
            (
                "urn:qarina:kb:ProvenanceRecord-",
                "urn:qarina:kb:Event-",
                "urn:qarina:kb:ProperDictionary-",
                "urn:qarina:kb:DictionaryEntry-",
                "urn:qarina:kb:Identity-",
            )
        )
        for subject in added
    )


def test_standalone_script_verifies_the_bundle_and_names_tampering(
    copied: Copy, tmp_path: Path
) -> None:
    bundle = _export(copied, tmp_path / "bundle")
    untouched = _standalone(bundle)
    assert untouched.returncode == 0, untouched.stdout + untouched.stderr
    assert "bundle verified" in untouched.stdout
    assert "links between consecutive events hold" in untouched.stdout
    checked = subprocess.run(
        ["sha256sum", "-c", "--quiet", "MANIFEST.sha256"], cwd=bundle, check=False
    )
    assert checked.returncode == 0

    def tampered(name: str) -> Path:
        copy = tmp_path / name
        shutil.copytree(bundle, copy)
        return copy

    def failure(copy: Path) -> str:
        result = _standalone(copy)
        assert result.returncode == 1, result.stdout
        return result.stdout.splitlines()[-1]

    # One byte of a copied keyframe.
    flipped = tampered("flipped")
    video = copied.store.show(copied.exported[1], DEFAULT_KEYS)
    assert video is not None
    keyframe = flipped / "files" / video["artifacts"][0]["sha256"]
    keyframe.chmod(stat.S_IRUSR | stat.S_IWUSR)
    content = bytearray(keyframe.read_bytes())
    content[len(content) // 2] ^= 0x01
    keyframe.write_bytes(bytes(content))
    assert f"files/{keyframe.name}: its content hashes to" in failure(flipped)
    assert subprocess.run(["sha256sum", "-c", "--quiet", "MANIFEST.sha256"], cwd=flipped,
                          capture_output=True, check=False).returncode != 0  # fmt: skip

    # One field of one custody event.
    lines = (bundle / "custody.jsonl").read_text(encoding="utf-8").splitlines()
    edited_event = json.loads(lines[3])
    edited_event["actor"] = "someone-else"
    edited = tampered("edited")
    (edited / "custody.jsonl").write_text(
        "\n".join([*lines[:3], json.dumps(edited_event, ensure_ascii=False), *lines[4:]]) + "\n",
        encoding="utf-8",
    )
    said = failure(edited)
    assert f"line 4 (event {edited_event['seq']})" in said and "altered" in said

    # The same edit with the event's hash recomputed: the graph still holds the original.
    edited_event["event_hash"] = verify_bundle.event_hash(edited_event)
    forged = tampered("forged")
    (forged / "custody.jsonl").write_text(
        "\n".join([*lines[:3], json.dumps(edited_event, ensure_ascii=False), *lines[4:]]) + "\n",
        encoding="utf-8",
    )
    said = failure(forged)
    assert f"event {edited_event['seq']}" in said

    # One line removed.
    removed = tampered("removed")
    (removed / "custody.jsonl").write_text(
        "\n".join([*lines[:5], *lines[6:]]) + "\n", encoding="utf-8"
    )
    assert "a line was removed" in failure(removed)

    # A file slipped in.
    extra = tampered("extra")
    (extra / "notes.txt").write_text("not part of the export")
    assert "notes.txt is in the bundle but not in MANIFEST.sha256" in failure(extra)


def test_export_is_recorded_after_the_bundle_and_the_store_is_unchanged(
    copied: Copy, tmp_path: Path
) -> None:
    def blobs() -> dict[Path, tuple[str, int]]:
        return {
            path: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
            for path in (copied.config.blob_root / "sha256").rglob("*")
            if path.is_file()
        }

    before = blobs()
    with copied.store.database.reader.connect() as connection:
        head_before = custody.chain_head(connection)
    assert head_before is not None
    bundle = _export(copied, tmp_path / "bundle")
    assert blobs() == before
    assert all(not mode & 0o222 for _, mode in before.values())
    manifest_sha256 = hashlib.sha256((bundle / "MANIFEST.sha256").read_bytes()).hexdigest()
    with copied.store.database.reader.connect() as connection:
        for sha256 in copied.exported:
            [export] = [
                event
                for event in custody.item_trail(connection, sha256)
                if event.action == "export"
            ]
            assert export.seq > head_before.seq
            assert export.actor == "qarina-export@tester"
            assert export.details["bundle_manifest_sha256"] == manifest_sha256
            assert export.details["chain_head_seq"] == head_before.seq
            assert export.details["chain_head_hash"] == head_before.event_hash
    header = json.loads((bundle / "custody.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert header["chain_head"] == {"seq": head_before.seq, "event_hash": head_before.event_hash}

    runner = CliRunner(env={"QARINA_OPERATOR": "tester"})
    base = ["--data", str(copied.config.data_dir)]
    verified = runner.invoke(app, [*base, "verify", "--fixity"])
    assert verified.exit_code == 0, verified.output
    assert "0 problems" in verified.output

    against = runner.invoke(app, [*base, "verify-bundle", str(bundle), "--against-store"])
    assert against.exit_code == 0, against.output
    assert "recorded this bundle's export" in against.output

    # Events rewritten with their hashes and a new manifest pass every standalone check
    # that links cannot reach, but the store never issued that manifest.
    forged = tmp_path / "forged"
    shutil.copytree(bundle, forged)
    (forged / "verify_bundle.py").chmod(0o644)
    (forged / "verify_bundle.py").write_text(
        (forged / "verify_bundle.py").read_text() + "\n# changed\n"
    )
    manifest = (forged / "MANIFEST.sha256").read_text().splitlines()
    digest = hashlib.sha256((forged / "verify_bundle.py").read_bytes()).hexdigest()
    (forged / "MANIFEST.sha256").write_text(
        "\n".join(
            f"{digest}  verify_bundle.py" if line.endswith("  verify_bundle.py") else line
            for line in manifest
        )
        + "\n"
    )
    assert _standalone(forged).returncode == 0
    refused = runner.invoke(app, [*base, "verify-bundle", str(forged), "--against-store"])
    assert refused.exit_code == 1
    assert "the store records no export of this bundle" in refused.output


def test_full_chain_without_media(copied: Copy, tmp_path: Path) -> None:
    bundle = _export(copied, tmp_path / "bundle", media=False, full_chain=True)
    assert not (bundle / "files").exists()
    lines = (bundle / "custody.jsonl").read_text(encoding="utf-8").splitlines()
    with copied.store.database.reader.connect() as connection:
        chain = list(custody.events(connection))
    events = [json.loads(line) for line in lines[1:]]
    exported_at = json.loads(lines[0])["chain_head"]["seq"]
    assert events == [dataclasses.asdict(event) for event in chain[:exported_at]]
    result = _standalone(bundle)
    assert result.returncode == 0, result.stdout
    assert "the whole chain from genesis" in result.stdout
    assert "no media" in result.stdout
    graph = rdflib.Graph().parse(bundle / "bundle.jsonld")
    assert _files_hashed(graph, copied.exported[0])
    # The first event altered in the copy: every link after it would have to be forged too.
    first = dict(events[0], action="nothing")
    first["event_hash"] = verify_bundle.event_hash(first)
    (bundle / "custody.jsonl").chmod(0o644)
    (bundle / "custody.jsonl").write_text(
        "\n".join([lines[0], json.dumps(first, ensure_ascii=False), *lines[2:]]) + "\n",
        encoding="utf-8",
    )
    said = _standalone(bundle).stdout
    assert "(event 2): its prev_hash is not the hash of event 1" in said


def test_export_refuses_what_it_cannot_do_right(copied: Copy, tmp_path: Path) -> None:
    existing = tmp_path / "there"
    existing.mkdir()
    with pytest.raises(ExportError, match="exists"):
        _export(copied, existing)
    with pytest.raises(ExportError, match="no item"):
        export_case_bundle(copied.store, DEFAULT_KEYS, ["0" * 64], tmp_path / "b", "tester")
    assert not (tmp_path / "b").exists()
    # A blob that changed since it was stored is never copied as if it were evidence.
    photo = copied.store.blobs.path_for(copied.exported[0])
    photo.chmod(0o644)
    photo.write_bytes(photo.read_bytes() + b"!")
    with pytest.raises(ExportError, match="no longer matches its hash"):
        _export(copied, tmp_path / "c")
    assert not (tmp_path / "c").exists()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


# --- JSON lines, and both backends ------------------------------------------------------------


def test_jsonl_round_trips(copied: Copy, tmp_path: Path) -> None:
    out = tmp_path / "items.jsonl"
    report = export_jsonl(
        copied.store, DEFAULT_KEYS, Selection(), out, "qarina-export@tester", page=2
    )
    assert report.items == len(copied.items)
    raw = out.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == report.file_sha256
    note = copied.store.show(copied.items["note.opus"], DEFAULT_KEYS)
    assert note is not None
    assert note["results"]["transcript"]["data"]["text"].encode() in raw  # UTF-8, not \\u escapes
    lines = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    assert [line["sha256"] for line in lines] == sorted(copied.items.values())
    with copied.store.database.reader.connect() as connection:
        for line in lines:
            trail = custody.item_trail(connection, line["sha256"])
            written = line.pop("custody")
            assert line == copied.store.show(line["sha256"], DEFAULT_KEYS)
            assert written == [
                {"seq": event.seq, "action": event.action, "event_hash": event.event_hash}
                for event in trail[:-1]
            ]
            assert trail[-1].action == "export"
            assert trail[-1].details["file_sha256"] == report.file_sha256


def test_backends_export_and_verify(store: Store, config: QarinaConfig, tmp_path: Path) -> None:
    """The store's side of exports on SQLite and PostgreSQL: photos only, no model."""
    folder = tmp_path / "intake"
    folder.mkdir()
    _photo_and_copy(folder)
    items = _process(folder, config, store)
    photo = items["street.jpg"]
    bundle = tmp_path / "bundle"
    export_case_bundle(store, DEFAULT_KEYS, [photo], bundle, "qarina-export@tester")
    copy = verify_bundle.verify(bundle, lambda line: None)
    assert copy.items == [photo]
    said = verify_against_store(store, bundle, copy)
    assert "recorded this bundle's export" in said[-1]
    out = tmp_path / "photo.jsonl"
    export_jsonl(store, DEFAULT_KEYS, Selection(shas=(photo.upper(),)), out, "tester")
    [line] = [json.loads(text) for text in out.read_text(encoding="utf-8").splitlines()]
    assert line["sha256"] == photo and line["custody"][0]["action"] == "ingest"
    with pytest.raises(ExportError, match="no request"):
        export_jsonl(store, DEFAULT_KEYS, Selection(request_ref="RFA-0"), tmp_path / "x", "t")
    assert not os.path.exists(tmp_path / "x")


def test_cli_export_options(copied: Copy, tmp_path: Path) -> None:
    runner = CliRunner(env={"QARINA_OPERATOR": "tester"})
    base = ["--data", str(copied.config.data_dir), "export"]
    photo = copied.exported[0]
    assert runner.invoke(app, [*base, photo]).exit_code == 2  # no --out
    assert runner.invoke(app, [*base, "--all", "--out", str(tmp_path / "a")]).exit_code == 2
    made = runner.invoke(app, [*base, photo, "--out", str(tmp_path / "b"), "--no-media"])
    assert made.exit_code == 0, made.output
    assert "sha256sum -c MANIFEST.sha256" in made.output
    lines = runner.invoke(
        app, [*base, "--format", "jsonl", "--all", "--out", str(tmp_path / "all.jsonl")]
    )
    assert lines.exit_code == 0, lines.output
    assert len((tmp_path / "all.jsonl").read_text(encoding="utf-8").splitlines()) == 4
