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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from pipelines.export.case import write_document
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


#: Where the street photo says it was taken: its metadata gives a place, and EXIF entries.
STREET_GPS = (36.2021, 37.1343, 380.5)


def _photo_and_copy(folder: Path) -> None:
    """A photo with EXIF (a camera, a time, a place) and a smaller copy of it without."""
    original = folder / "street.jpg"
    photos.scene(seed=40, size=(640, 480)).save(
        original, "JPEG", quality=90, exif=photos.exif_bytes(gps=STREET_GPS)
    )
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


Nodes = dict[str, dict[str, Any]]


def _forged(bundle: Path, copy: Path, edit: Callable[[Nodes], None]) -> Path:
    """A copy of the bundle whose graph `edit` changed, with the manifest made again: what
    `sha256sum -c` and the manifest alone can no longer tell from the original."""
    shutil.copytree(bundle, copy)
    graph = copy / verify_bundle.GRAPH
    document = json.loads(graph.read_text(encoding="utf-8"))
    nodes = {node["@id"]: node for node in document["@graph"]}
    edit(nodes)
    document["@graph"] = [nodes[key] for key in sorted(nodes)]
    graph.write_bytes(write_document(document))
    digest = hashlib.sha256(graph.read_bytes()).hexdigest()
    manifest = (copy / verify_bundle.MANIFEST).read_text(encoding="utf-8").splitlines()
    (copy / verify_bundle.MANIFEST).write_text(
        "".join(
            f"{digest}  {verify_bundle.GRAPH}\n"
            if line.endswith(f"  {verify_bundle.GRAPH}")
            else f"{line}\n"
            for line in manifest
        ),
        encoding="utf-8",
    )
    checked = subprocess.run(["sha256sum", "-c", "--quiet", verify_bundle.MANIFEST], cwd=copy,
                             capture_output=True, check=False)  # fmt: skip
    assert checked.returncode == 0
    return copy


@dataclass(frozen=True)
class ResultNodes:
    """The IRIs of one stored result's nodes, rebuilt from its key as verify_bundle.py does."""

    item: str
    stage: str
    version: str
    config_hash: str

    @classmethod
    def of(cls, store: Store, sha256: str, stage: str) -> ResultNodes:
        record = store.show(sha256, DEFAULT_KEYS)
        assert record is not None
        result = record["results"][stage]
        return cls(sha256, stage, result["stage_version"], result["config_hash"])

    def iri(self, kind: str) -> str:
        key = (self.item, self.stage, self.version, self.config_hash)
        if kind == "AnalyticResult":
            return verify_bundle.iri(kind, *key)
        return verify_bundle.iri(kind, "result", *key)

    @property
    def data_facet(self) -> str:
        return verify_bundle.iri("ContentDataFacet", self.iri("ContentData"))


def test_standalone_script_ties_results_and_their_views_to_custody(
    copied: Copy, tmp_path: Path
) -> None:
    """A forger who edits a result's data, its hash and the manifest together, or only what a
    person reads of it, is caught by the custody event that stored the result."""
    bundle = _export(copied, tmp_path / "bundle")
    photo, _, note = copied.exported
    transcript = ResultNodes.of(copied.store, note, "transcript")
    metadata = ResultNodes.of(copied.store, photo, "metadata")
    with copied.store.database.reader.connect() as connection:
        [stored] = [
            event
            for event in custody.item_trail(connection, note)
            if event.action == "result" and event.stage == "transcript"
        ]
    graph = json.loads((bundle / verify_bundle.GRAPH).read_text(encoding="utf-8"))
    nodes = {node["@id"]: node for node in graph["@graph"]}
    location = verify_bundle.iri("Location", metadata.iri("AnalyticResult"))
    assert nodes[verify_bundle.iri("LatLongCoordinatesFacet", location)][
        "uco-location:latitude"
    ] == {"@type": "xsd:decimal", "@value": str(STREET_GPS[0])}
    exif = verify_bundle.iri("ControlledDictionary", "exif", verify_bundle.iri("File", photo))
    assert len(nodes[exif]["uco-types:entry"]) > 5
    untouched = _standalone(bundle)
    assert untouched.returncode == 0, untouched.stdout
    assert "match the hashes custody recorded when it stored them" in untouched.stdout
    assert "EXIF entries (3 items)" in untouched.stdout

    def failure(copy: Path) -> str:
        result = _standalone(copy)
        assert result.returncode == 1, result.stdout
        return result.stdout.splitlines()[-1]

    def transcript_rewritten(nodes: Nodes) -> None:
        """The transcript's text changed in its data, and the data's hash with it."""
        facet = nodes[transcript.data_facet]
        data = json.loads(facet["uco-observable:dataPayload"])
        data["text"] = "كلام لم يقله أحد"
        payload = custody.canonical_json(data)
        digest = hashlib.sha256(payload.encode()).hexdigest()
        facet["uco-observable:dataPayload"] = payload
        facet["uco-observable:sizeInBytes"] = len(payload.encode())
        facet["uco-observable:hash"] = {"@id": verify_bundle.iri("Hash", "SHA256", digest)}
        nodes[facet["uco-observable:hash"]["@id"]] = {
            "@id": facet["uco-observable:hash"]["@id"],
            "@type": "uco-types:Hash",
            "uco-types:hashMethod": "SHA256",
            "uco-types:hashValue": {"@type": "xsd:hexBinary", "@value": digest},
        }
        nodes[transcript.iri("AnalyticResult")]["uco-core:statement"] = [data["text"]]

    said = failure(_forged(bundle, tmp_path / "payload", transcript_rewritten))
    assert f"the data of stage transcript's result (version {transcript.version}" in said
    assert f"for item {note} hashes to" in said
    assert f"custody event {stored.seq} recorded {stored.details['result_sha256']}" in said

    def hash_value_changed(nodes: Nodes) -> None:
        """The same, with the hash node's value changed where it stands."""
        facet = nodes[transcript.data_facet]
        data = json.loads(facet["uco-observable:dataPayload"])
        facet["uco-observable:dataPayload"] = custody.canonical_json({**data, "text": "لا"})
        digest = nodes[facet["uco-observable:hash"]["@id"]]["uco-types:hashValue"]
        digest["@value"] = hashlib.sha256(facet["uco-observable:dataPayload"].encode()).hexdigest()

    said = failure(_forged(bundle, tmp_path / "in-place", hash_value_changed))
    assert "not the value its IRI was made from: the hash was altered" in said

    def statement_changed(nodes: Nodes) -> None:
        nodes[transcript.iri("AnalyticResult")]["uco-core:statement"] = ["كلام آخر"]

    said = failure(_forged(bundle, tmp_path / "statement", statement_changed))
    assert f"what {transcript.iri('AnalyticResult')} states is not what the data" in said

    def place_moved(nodes: Nodes) -> None:
        facet = nodes[verify_bundle.iri("LatLongCoordinatesFacet", location)]
        facet["uco-location:latitude"]["@value"] = "33.5138"

    said = failure(_forged(bundle, tmp_path / "place", place_moved))
    assert f"the latitude of {location} is not the one the data of stage metadata's" in said

    def exif_changed(nodes: Nodes) -> None:
        entry = nodes[nodes[exif]["uco-types:entry"][0]["@id"]]
        entry["uco-types:value"] = "another camera"

    said = failure(_forged(bundle, tmp_path / "exif", exif_changed))
    assert f"the EXIF entries of item {photo} are not the record" in said

    def result_left_out(nodes: Nodes) -> None:
        del nodes[metadata.iri("InvestigativeAction")]

    said = failure(_forged(bundle, tmp_path / "left-out", result_left_out))
    assert f"leaves out stage metadata's result (version {metadata.version}" in said


def test_manifest_sha256_given_apart_is_checked(copied: Copy, tmp_path: Path) -> None:
    bundle = _export(copied, tmp_path / "bundle")
    sent = hashlib.sha256((bundle / verify_bundle.MANIFEST).read_bytes()).hexdigest()
    script = [SYSTEM_PYTHON, "-I", str(bundle / verify_bundle.SCRIPT)]

    def run(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*script, *arguments], capture_output=True, text=True, cwd="/",
                              env={"PATH": "/usr/bin:/bin"}, timeout=60, check=False)  # fmt: skip

    unchecked = run()
    assert unchecked.returncode == 0
    assert f"its own SHA-256 is {sent}: compare it with the one the sender gave" in unchecked.stdout
    checked = run("--manifest-sha256", sent.upper())
    assert checked.returncode == 0, checked.stdout
    assert f"it hashes to {sent}, the SHA-256 the sender gave" in checked.stdout
    wrong = run("--manifest-sha256", "ab" * 32)
    assert wrong.returncode == 1
    assert wrong.stdout.splitlines()[-1] == (
        f"FAILED: MANIFEST.sha256 hashes to {sent}, not to {'ab' * 32}, the SHA-256 given with"
        " --manifest-sha256: this is not the bundle that was sent, or it was remade"
    )
    malformed = run("--manifest-sha256", "not-a-hash")
    assert malformed.returncode == 2 and "not a SHA-256" in malformed.stderr

    runner = CliRunner(env={"QARINA_OPERATOR": "tester"})
    base = ["--data", str(copied.config.data_dir), "verify-bundle", str(bundle)]
    right = runner.invoke(app, [*base, "--manifest-sha256", sent])
    assert right.exit_code == 0, right.output
    refused = runner.invoke(app, [*base, "--manifest-sha256", "cd" * 32])
    assert refused.exit_code == 1
    assert "not the bundle that was sent" in refused.output
    assert runner.invoke(app, [*base, "--manifest-sha256", "xyz"]).exit_code == 2


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


def test_bundle_is_the_store_as_of_its_chain_head(
    copied: Copy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What commits while an export reads waits for the next export: an item whose arrival
    is after the head makes the export read the head again, and a result stored after it is
    left out with its event, so every result of the bundle has its event and each event its
    result."""
    note = copied.items["note.opus"]
    with copied.store.database.reader.connect() as connection:
        chain = list(custody.events(connection))
    [arrival] = [e for e in chain if e.action == "ingest" and e.item_sha256 == note]
    [transcribed] = [e for e in chain if e.stage == "transcript" and e.item_sha256 == note]
    heads = iter([chain[arrival.seq - 2], chain[transcribed.seq - 2]])
    monkeypatch.setattr(custody, "chain_head", lambda connection: next(heads))
    bundle = _export(copied, tmp_path / "bundle")
    monkeypatch.undo()
    header = json.loads((bundle / "custody.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert header["chain_head"]["seq"] == transcribed.seq - 1
    result = _standalone(bundle)
    assert result.returncode == 0, result.stdout
    document = json.loads((bundle / verify_bundle.GRAPH).read_text(encoding="utf-8"))
    nodes = {node["@id"] for node in document["@graph"]}
    later = ResultNodes.of(copied.store, note, "transcript")
    assert verify_bundle.iri("File", note) in nodes
    assert later.iri("InvestigativeAction") not in nodes
    assert later.iri("ContentData") not in nodes


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


def test_an_export_is_recorded_whole_or_not_at_all(
    copied: Copy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while the export events are appended (the process killed, the disk full)
    leaves no event, no file and no bundle; one transaction holds every item's event."""
    appended = custody.append
    calls: list[int] = []

    def dies_on_the_second_page(connection: Any, entries: list[custody.CustodyEntry]) -> None:
        calls.append(len(entries))
        if len(calls) == 2:
            raise KeyboardInterrupt
        appended(connection, entries)

    def exports() -> list[StoredEvent]:
        with copied.store.database.reader.connect() as connection:
            return [event for event in custody.events(connection) if event.action == "export"]

    monkeypatch.setattr(custody, "append", dies_on_the_second_page)
    exported = tmp_path / "exports"
    exported.mkdir()
    out = exported / "items.jsonl"
    with pytest.raises(KeyboardInterrupt):
        export_jsonl(copied.store, DEFAULT_KEYS, Selection(), out, "qarina-export@tester", page=2)
    assert calls == [2, 2]
    assert exports() == []
    assert list(exported.iterdir()) == []

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(copied.store, "record_sharing", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _export(copied, exported / "bundle")
    assert exports() == []
    assert list(exported.iterdir()) == []

    monkeypatch.undo()
    report = export_jsonl(
        copied.store, DEFAULT_KEYS, Selection(), out, "qarina-export@tester", page=3
    )
    recorded = exports()
    assert sorted(event.item_sha256 for event in recorded) == sorted(copied.items.values())
    assert [event.seq for event in recorded] == list(
        range(report.head_seq + 1, report.head_seq + 1 + len(copied.items))
    )
    assert {event.details["file_sha256"] for event in recorded} == {report.file_sha256}
    assert {event.details["items"] for event in recorded} == {len(copied.items)}
    assert {event.details["chain_head_hash"] for event in recorded} == {report.head_hash}


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
