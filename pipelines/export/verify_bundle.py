#!/usr/bin/env python3
"""Re-check a Qarina evidence bundle with nothing but Python's standard library.

    python3 verify_bundle.py [BUNDLE]     (BUNDLE: the bundle's folder; default: this file's)

A court's analyst may have no Qarina and no right to install it, so this file is shipped in
every bundle and reads the bundle as Qarina writes it. It stops at the first problem, names it
and exits with status 1; it prints each check it passed and exits 0 when all pass:

1. custody.jsonl: every custody event's SHA-256 recomputed from its fields; each event's
   `prev_hash` against the hash of the event before it wherever the two are consecutive in the
   chain; with the whole chain (`qarina export --full-chain`), every link from the genesis
   hash (64 zeros) to the chain head the export was anchored to. The first line says what
   was exported and how many events follow, so a removed line shows.
2. bundle.jsonld: the custody events its provenance records carry, field by field, against
   custody.jsonl; each result's data against the SHA-256 the graph gives for it.
3. files/: each file against the SHA-256 that is its name, the hash bundle.jsonld gives for
   it and the size custody recorded at ingest.
4. MANIFEST.sha256: every file of the bundle against it (what `sha256sum -c` checks), and
   no file left out of it.

An event's hash is the SHA-256 of the UTF-8 bytes of the canonical JSON (keys sorted, no
spaces, non-ASCII characters kept) of the list [seq, at_iso, actor, action, item_sha256,
stage, details_text, prev_hash]. Qarina's store (evidence/custody.py) computes it the same way;
its tests prove the two agree, byte for byte.

What this cannot prove alone: that the events are the ones the store holds. Someone who
rewrote an event could recompute its hash; the links to its neighbours (all of them, with
the whole chain), the chain head the export was anchored to, and the manifest's SHA-256
(recorded in the store's custody when the bundle was made: `qarina verify-bundle
--against-store` compares them) are what they cannot forge.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "MANIFEST.sha256"
GRAPH = "bundle.jsonld"
CUSTODY = "custody.jsonl"
FILES = "files"
SCRIPT = "verify_bundle.py"
#: The first line of custody.jsonl carries this key (the format's version) and what was exported.
HEADER_KEY = "qarina_custody_export"
#: The fields of a custody event, as the store holds them; the last is the hash of the others.
EVENT_FIELDS = (
    "seq",
    "at_iso",
    "actor",
    "action",
    "item_sha256",
    "stage",
    "details_text",
    "prev_hash",
    "event_hash",
)
GENESIS_HASH = "0" * 64
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MANIFEST_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")
_SHIPPED_PATH = re.compile(FILES + r"/[0-9a-f]{64}")
_CHUNK = 1 << 20


class BundleProblem(Exception):
    """The first thing found wrong with a bundle, in words that name it."""


def event_hash(event: dict[str, Any]) -> str:
    """The SHA-256 a custody event's fields hash to (see the module's docstring)."""
    material = [event[name] for name in EVENT_FIELDS[:-1]]
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Custody:
    """custody.jsonl read: its header (what was exported, the chain head) and its events."""

    scope: str
    items: list[str]
    head_seq: int
    head_hash: str
    events: list[dict[str, Any]]

    @property
    def full_chain(self) -> bool:
        return self.scope == "chain"

    @functools.cached_property
    def exported(self) -> frozenset[str]:
        return frozenset(self.items)


def _header(line: str) -> tuple[str, list[str], int, int, str]:
    try:
        header = json.loads(line)
        scope, items, count = header["scope"], header["items"], header["events"]
        head_seq, head_hash = header["chain_head"]["seq"], header["chain_head"]["event_hash"]
    except (ValueError, KeyError, TypeError):
        raise BundleProblem(f"{CUSTODY} line 1 is not the export's header") from None
    if header.get(HEADER_KEY) != 1 or scope not in ("items", "chain"):
        raise BundleProblem(f"{CUSTODY} line 1 is not a version 1 header this script reads")
    if not all(isinstance(sha, str) and _HEX64.fullmatch(sha) for sha in items):
        raise BundleProblem(f"{CUSTODY} line 1 names an item that is not a SHA-256")
    return scope, items, count, head_seq, head_hash


def _event(line: str, number: int) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError:
        raise BundleProblem(f"{CUSTODY} line {number} is not JSON") from None
    if not isinstance(event, dict) or sorted(event) != sorted(EVENT_FIELDS):
        raise BundleProblem(
            f"{CUSTODY} line {number} does not hold exactly the fields of a custody event"
        )
    if not isinstance(event["seq"], int) or isinstance(event["seq"], bool):
        raise BundleProblem(f"{CUSTODY} line {number}: seq is not a whole number")
    return event


def read_custody(bundle: Path) -> Custody:
    """custody.jsonl parsed, its events unchecked."""
    try:
        lines = (bundle / CUSTODY).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise BundleProblem(f"{CUSTODY} cannot be read: {error}") from None
    if not lines:
        raise BundleProblem(f"{CUSTODY} is empty")
    scope, items, count, head_seq, head_hash = _header(lines[0])
    events = [_event(line, number) for number, line in enumerate(lines[1:], 2)]
    if len(events) != count:
        raise BundleProblem(
            f"{CUSTODY} holds {len(events)} events but its header says {count}:"
            " a line was removed or added"
        )
    return Custody(scope, items, head_seq, head_hash, events)


def _check_event(
    custody: Custody, event: dict[str, Any], previous: dict[str, Any] | None, number: int
) -> bool:
    """One event's hash, place and link to the event before it; whether it was linked."""
    seq = event["seq"]
    where = f"{CUSTODY} line {number} (event {seq})"
    recomputed = event_hash(event)
    if recomputed != event["event_hash"]:
        raise BundleProblem(
            f"{where}: its fields hash to {recomputed}, not to the event_hash it states"
            f" ({event['event_hash']}): the event was altered"
        )
    if not custody.full_chain and event["item_sha256"] not in custody.exported:
        raise BundleProblem(f"{where} names an item the bundle does not export")
    expected = 1 if previous is None else previous["seq"] + 1
    if custody.full_chain and seq != expected:
        raise BundleProblem(f"{where}: event {expected} of the chain is missing before it")
    if previous is not None and seq <= previous["seq"]:
        raise BundleProblem(f"{where} does not follow event {previous['seq']}")
    if seq == 1 and event["prev_hash"] != GENESIS_HASH:
        raise BundleProblem(f"{where}: the first event does not start from the genesis hash")
    if seq > custody.head_seq:
        raise BundleProblem(f"{where} comes after the chain head the export names")
    if seq == custody.head_seq and event["event_hash"] != custody.head_hash:
        raise BundleProblem(f"{where} is the chain head, but its hash is not the head's")
    if previous is None or seq != previous["seq"] + 1:
        return False
    if event["prev_hash"] != previous["event_hash"]:
        raise BundleProblem(
            f"{where}: its prev_hash is not the hash of event {previous['seq']}:"
            " the chain is broken between them"
        )
    return True


def check_custody(custody: Custody) -> str:
    """Every event's hash, the links between consecutive events, the anchor to the head."""
    links = 0
    previous: dict[str, Any] | None = None
    for number, event in enumerate(custody.events, 2):
        links += _check_event(custody, event, previous, number)
        previous = event
    if custody.full_chain and (previous is None or previous["seq"] != custody.head_seq):
        raise BundleProblem(f"{CUSTODY} stops before the chain head (event {custody.head_seq})")
    named = {event["item_sha256"] for event in custody.events}
    for sha256 in custody.items:
        if sha256 not in named:
            raise BundleProblem(f"{CUSTODY} has no custody event for exported item {sha256}")
    reach = "the whole chain from genesis" if custody.full_chain else "the exported items"
    return (
        f"{CUSTODY}: {len(custody.events)} events of {reach}; every hash recomputed from its"
        f" fields; {links} links between consecutive events hold; anchored to chain head"
        f" event {custody.head_seq} ({custody.head_hash})"
    )


@dataclass
class _Graph:
    """bundle.jsonld's nodes by id, read in the flat form Qarina writes (one @graph list,
    compact names): enough to follow references without a JSON-LD processor."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def of_type(self, name: str) -> Iterator[dict[str, Any]]:
        for node in self.nodes.values():
            types = node.get("@type", [])
            if name in (types if isinstance(types, list) else [types]):
                yield node

    def values(self, node: dict[str, Any], name: str) -> list[Any]:
        value = node.get(name, [])
        return [
            item["@value"] if isinstance(item, dict) and "@value" in item else item
            for item in (value if isinstance(value, list) else [value])
        ]

    def linked(self, node: dict[str, Any], name: str) -> list[dict[str, Any]]:
        found = []
        for reference in self.values(node, name):
            if not isinstance(reference, dict) or reference.get("@id") not in self.nodes:
                raise BundleProblem(f"{GRAPH}: {node['@id']} refers to a node it does not hold")
            found.append(self.nodes[reference["@id"]])
        return found

    def sha256s(self, node: dict[str, Any]) -> list[str]:
        """The SHA-256 hashes its content data facets give."""
        return [
            str(self.values(digest, "uco-types:hashValue")[0]).lower()
            for facet in self.linked(node, "uco-core:hasFacet")
            if "uco-observable:ContentDataFacet" in self.values(facet, "@type")
            for digest in self.linked(facet, "uco-observable:hash")
            if self.values(digest, "uco-types:hashMethod") == ["SHA256"]
        ]


def _read_graph(bundle: Path) -> _Graph:
    try:
        document = json.loads((bundle / GRAPH).read_text(encoding="utf-8"))
        nodes = {node["@id"]: node for node in document["@graph"]}
    except (OSError, ValueError, KeyError, TypeError):
        raise BundleProblem(f"{GRAPH} cannot be read as the JSON-LD Qarina writes") from None
    return _Graph(nodes)


def _graph_event(graph: _Graph, node: dict[str, Any]) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    for dictionary in graph.linked(node, "uco-core:eventAttribute"):
        for entry in graph.linked(dictionary, "uco-types:entry"):
            entries[str(graph.values(entry, "uco-types:key")[0])] = graph.values(
                entry, "uco-types:value"
            )[0]
    event = {name: entries.get(name) for name in EVENT_FIELDS}
    try:
        event["seq"] = int(str(entries["seq"]))
    except (KeyError, ValueError):
        raise BundleProblem(f"{GRAPH}: custody event {node['@id']} has no seq") from None
    return event


def check_graph(bundle: Path, custody: Custody) -> tuple[_Graph, str]:
    """The provenance records' events against custody.jsonl; result data against its hash."""
    graph = _read_graph(bundle)
    by_seq = {event["seq"]: event for event in custody.events}
    in_graph: set[int] = set()
    for node in graph.of_type("uco-core:Event"):
        event = _graph_event(graph, node)
        stated = by_seq.get(event["seq"])
        if stated is None:
            raise BundleProblem(f"{GRAPH} records custody event {event['seq']}; {CUSTODY} lacks it")
        for name in EVENT_FIELDS:
            if event[name] != stated[name]:
                raise BundleProblem(
                    f"{GRAPH} and {CUSTODY} differ on custody event {event['seq']}'s {name}"
                )
        in_graph.add(event["seq"])
    for event in custody.events:
        if event["item_sha256"] in custody.exported and event["seq"] not in in_graph:
            raise BundleProblem(f"{GRAPH} has no provenance record of custody event {event['seq']}")
    payloads = 0
    for node in graph.of_type("uco-observable:ContentData"):
        for facet in graph.linked(node, "uco-core:hasFacet"):
            for payload in graph.values(facet, "uco-observable:dataPayload"):
                digest = hashlib.sha256(str(payload).encode()).hexdigest()
                if digest not in graph.sha256s(node):
                    raise BundleProblem(
                        f"{GRAPH}: the data of {node['@id']} hashes to {digest}, not to the"
                        " SHA-256 given for it"
                    )
                payloads += 1
    files = {sha for node in graph.of_type("uco-observable:File") for sha in graph.sha256s(node)}
    for sha256 in custody.items:
        if sha256 not in files:
            raise BundleProblem(f"{GRAPH} has no File for exported item {sha256}")
    return graph, (
        f"{GRAPH}: the {len(in_graph)} custody events of its provenance records agree with"
        f" {CUSTODY} field by field; {payloads} result data payloads match their SHA-256;"
        f" all {len(custody.items)} exported items are there"
    )


def _digest(path: Path, digests: dict[Path, str]) -> str:
    """A file's SHA-256, read once however many checks ask."""
    if path not in digests:
        hasher = hashlib.sha256()
        with path.open("rb") as stream:
            while chunk := stream.read(_CHUNK):
                hasher.update(chunk)
        digests[path] = hasher.hexdigest()
    return digests[path]


def _shipped(graph: _Graph) -> dict[str, list[str]]:
    """Bundle path -> the SHA-256s bundle.jsonld gives for the File stored there."""
    shipped: dict[str, list[str]] = {}
    for node in graph.of_type("uco-observable:File"):
        for facet in graph.linked(node, "uco-core:hasFacet"):
            for path in graph.values(facet, "uco-observable:filePath"):
                if _SHIPPED_PATH.fullmatch(str(path)):
                    shipped.setdefault(str(path), []).extend(graph.sha256s(node))
    return shipped


def check_files(bundle: Path, custody: Custody, graph: _Graph, digests: dict[Path, str]) -> str:
    """files/ against the names, the graph's hashes and custody's sizes."""
    shipped = _shipped(graph)
    folder = bundle / FILES
    present = sorted(folder.iterdir()) if folder.is_dir() else []
    for path in present:
        where = f"{FILES}/{path.name}"
        if path.is_symlink() or not path.is_file():
            raise BundleProblem(f"{where} is not a regular file")
        if not _HEX64.fullmatch(path.name):
            raise BundleProblem(f"{where} is not named by a SHA-256")
        digest = _digest(path, digests)
        if digest != path.name:
            raise BundleProblem(f"{where}: its content hashes to {digest}: the file was altered")
        if where not in shipped:
            raise BundleProblem(f"{where} is not described in {GRAPH}")
    for where, hashes in sorted(shipped.items()):
        if not (bundle / where).is_file():
            raise BundleProblem(f"{where}, named by {GRAPH}, is missing")
        if any(sha256 != Path(where).name for sha256 in hashes):
            raise BundleProblem(f"{GRAPH} gives another SHA-256 for {where} than its name")
    for event in custody.events:
        path = folder / str(event["item_sha256"])
        if event["action"] != "ingest" or not path.is_file():
            continue
        size = json.loads(event["details_text"]).get("size_bytes")
        if size != path.stat().st_size:
            raise BundleProblem(
                f"{FILES}/{path.name} holds {path.stat().st_size} bytes; custody event"
                f" {event['seq']} recorded {size} at ingest"
            )
    if not present:
        return f"{FILES}/: no media in this bundle (exported with --no-media); hashes only"
    return (
        f"{FILES}/: {len(present)} files match the SHA-256 that names them, the hashes"
        f" {GRAPH} gives and the sizes custody recorded at ingest"
    )


def check_manifest(bundle: Path, digests: dict[Path, str]) -> str:
    """Every file against MANIFEST.sha256, and every file of the bundle in it."""
    try:
        lines = (bundle / MANIFEST).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise BundleProblem(f"{MANIFEST} cannot be read") from None
    listed: set[str] = set()
    for number, line in enumerate(lines, 1):
        match = _MANIFEST_LINE.fullmatch(line)
        if match is None:
            raise BundleProblem(f"{MANIFEST} line {number} is not a sha256sum line")
        expected, name = match.groups()
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or name == MANIFEST:
            raise BundleProblem(f"{MANIFEST} line {number} names a path outside the bundle")
        path = bundle / name
        if path.is_symlink() or not path.is_file():
            raise BundleProblem(f"{name}, listed in {MANIFEST}, is missing")
        if _digest(path, digests) != expected:
            raise BundleProblem(f"{name} does not match its SHA-256 in {MANIFEST}")
        listed.add(name)
    for path in sorted(bundle.rglob("*")):
        name = path.relative_to(bundle).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if name != MANIFEST and name not in listed:
            raise BundleProblem(f"{name} is in the bundle but not in {MANIFEST}")
    return f"{MANIFEST}: all {len(listed)} files match, and no file is left out of it"


def verify(bundle: Path, say: Callable[[str], None]) -> Custody:
    """Every check, in order; `say` hears each one passed.

    Raises:
        BundleProblem: the first problem found.
    """
    custody = read_custody(bundle)
    say(check_custody(custody))
    graph, said = check_graph(bundle, custody)
    say(said)
    digests: dict[Path, str] = {}
    say(check_files(bundle, custody, graph, digests))
    say(check_manifest(bundle, digests))
    return custody


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", nargs="?", type=Path, default=Path(__file__).resolve().parent)
    bundle = parser.parse_args(argv).bundle
    try:
        verify(bundle, print)
    except BundleProblem as problem:
        print(f"FAILED: {problem}")
        return 1
    print(f"bundle verified: {bundle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
