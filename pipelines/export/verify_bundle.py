#!/usr/bin/env python3
"""Re-check a Qarina evidence bundle with nothing but Python's standard library.

    python3 verify_bundle.py [--manifest-sha256 HEX] [BUNDLE]
        BUNDLE: the bundle's folder (default: this file's); HEX: the SHA-256 of
        MANIFEST.sha256 that the sender gave apart from the bundle (Qarina prints it)

A court's analyst may have no Qarina and no right to install it, so this file is shipped in
every bundle and reads the bundle as Qarina writes it. It stops at the first problem, names it
and exits with status 1; it prints each check it passed and exits 0 when all pass:

1. custody.jsonl: every custody event's SHA-256 recomputed from its fields; each event's
   `prev_hash` against the hash of the event before it wherever the two are consecutive in the
   chain; with the whole chain (`qarina export --full-chain`), every link from the genesis
   hash (64 zeros) to the chain head the export was anchored to. The first line says what
   was exported and how many events follow, so a removed line shows.
2. bundle.jsonld: the custody events its provenance records carry, field by field, against
   custody.jsonl; every hash node against the value its IRI was made from; a File for every
   exported item.
3. bundle.jsonld's results against custody: each stage result of an exported item was
   committed with a `result` or `skip` event that records the SHA-256 of its data
   (`result_sha256`) and of its derived files (`artifacts`). The event names the result's
   key (item, stage, version, config hash), from which this script rebuilds the IRIs Qarina
   gives the result's nodes. Every result in the graph must have such an event; every such
   event must have its result in the graph; the data payload must hash to the event's
   `result_sha256`; the derived files must be those of the event. The readable views are
   rebuilt from the checked payload and compared: a transcript's text and the capture
   metadata as `uco-core:statement`s, the place as a `uco-location:Location`, and
   exiftool's record as the item's EXIF entries (those of one of its metadata results).
4. files/: each file against the SHA-256 that is its name, the hash bundle.jsonld gives for
   it and the size custody recorded at ingest (where an ingest event records one).
5. MANIFEST.sha256: every file of the bundle against it (what `sha256sum -c` checks), no
   file left out of it, and, given `--manifest-sha256`, its own SHA-256 against that value.

An event's hash is the SHA-256 of the UTF-8 bytes of the canonical JSON (keys sorted, no
spaces, non-ASCII characters kept) of the list [seq, at_iso, actor, action, item_sha256,
stage, details_text, prev_hash]. Qarina's store (evidence/custody.py) computes it the same way;
its tests prove the two agree, byte for byte.

Not checked: the rest of the graph, which describes for people what the checked records
hold. That means names, descriptions and tags (a transcript's language and segment count
among them); the acquisitions' arguments (source, operator, request); the tools, models and
configuration given as instruments; and the near-duplicate and archive relationships with
their distances. The facts behind them are in the checked custody events, as recorded: an
`ingest` event's details name the source, operator and request (or the archive it was found
in); a `result` event's `provenance` names the versions of the tools and models and the
parameters; a `link` event names both items, the algorithm, the distance and the times.

What this cannot prove alone: that the events are the ones the store holds. Someone who
rewrote an event could recompute its hash, and then the data its result holds and the
manifest. Three things resist that forgery. The links to its neighbours (all of them, with
the whole chain) and the chain head the export was anchored to are the first two. The third is
the manifest's SHA-256: Qarina prints it so the sender can give it apart from the bundle, and
the store's custody recorded it when the bundle was made (`qarina verify-bundle
--against-store` compares them). Pass it as `--manifest-sha256`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
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
#: The custody actions that commit a stage's result; their details record its data's hash.
RESULT_ACTIONS = ("result", "skip")
#: The stages whose ok results the graph also gives as an AnalyticResult a person reads.
READABLE_STAGES = ("transcript", "metadata")
#: The capture metadata an AnalyticResult states, in this order.
METADATA_STATEMENTS = ("captured_at", "captured_at_source", "device", "gps", "duration_s")
#: The base of the graph's node IRIs (the `kb:` prefix).
KB = "urn:qarina:kb:"
_IRI_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, KB)
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


# What the graph is written with: Qarina's exporter (case.py) uses these very functions, so
# the IRIs and readable views this script rebuilds are the ones written.


def iri(kind: str, *parts: object) -> str:
    """The IRI of the `kind` node that `parts` identify: the same in every export."""
    name = "/".join([kind, *(str(part) for part in parts)])
    return f"kb:{kind}-{uuid.uuid5(_IRI_NAMESPACE, name)}"


def canonical_json(value: Any) -> str:
    """The JSON text Qarina hashes a result's data as (evidence/custody.py's spelling)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def as_text(value: Any) -> str:
    """A value as a person reads it in the graph: text as it is, anything else as JSON."""
    return value if isinstance(value, str) else canonical_json(value)


def decimal_text(value: float | None) -> str | None:
    """A number as the graph's xsd:decimal literal: all its digits, no exponent."""
    return None if value is None else f"{Decimal(repr(value)):f}"


def statements(stage: str, data: Mapping[str, Any]) -> list[str]:
    """What the AnalyticResult of a transcript (its text) or of metadata (capture time,
    device, place, duration) states."""
    if stage == "transcript":
        found = [data.get("text")]
    else:
        found = [
            f"{name}: {as_text(data[name])}"
            for name in METADATA_STATEMENTS
            if data.get(name) is not None
        ]
    return [str(statement) for statement in found if statement]


def exif_entries(raw: Mapping[str, Any]) -> dict[str, str]:
    """exiftool's record as the item's EXIF dictionary gives it: tag -> value as text."""
    return {str(tag): as_text(value) for tag, value in raw.items()}


def stored_key(
    action: str, stage: str | None, details: Mapping[str, Any]
) -> tuple[str, ...] | None:
    """(stage, version, config hash) of the result a custody event stored; None for any other
    event, a re-run that found its result stored already among them."""
    if action not in RESULT_ACTIONS or stage is None or details.get("already_stored"):
        return None
    return (stage, str(details.get("stage_version")), str(details.get("config_hash")))


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
            if self.is_a(node, name):
                yield node

    def is_a(self, node: dict[str, Any], name: str) -> bool:
        types = node.get("@type", [])
        return name in (types if isinstance(types, list) else [types])

    def node(self, node_id: str, what: str) -> dict[str, Any]:
        """The node of an IRI this script rebuilt; `what` names it if the graph lacks it."""
        if node_id not in self.nodes:
            raise BundleProblem(f"{GRAPH} does not hold {what} ({node_id})")
        return self.nodes[node_id]

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
    """The provenance records' events against custody.jsonl; every hash node against the
    value its IRI was made from; a File for every exported item."""
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
    hashes = 0
    for node in graph.of_type("uco-types:Hash"):
        method = [str(value) for value in graph.values(node, "uco-types:hashMethod")]
        value = [str(value).lower() for value in graph.values(node, "uco-types:hashValue")]
        if len(method) != 1 or len(value) != 1 or node["@id"] != iri("Hash", method[0], value[0]):
            raise BundleProblem(
                f"{GRAPH}: the hash {node['@id']} gives {'/'.join(method)} {'/'.join(value)},"
                " not the value its IRI was made from: the hash was altered"
            )
        hashes += 1
    files = {sha for node in graph.of_type("uco-observable:File") for sha in graph.sha256s(node)}
    for sha256 in custody.items:
        if sha256 not in files:
            raise BundleProblem(f"{GRAPH} has no File for exported item {sha256}")
    return graph, (
        f"{GRAPH}: the {len(in_graph)} custody events of its provenance records agree with"
        f" {CUSTODY} field by field; its {hashes} hashes are those their IRIs were made from;"
        f" all {len(custody.items)} exported items are there"
    )


@dataclass(frozen=True)
class _Stored:
    """A result as the custody event that committed it records it."""

    event: dict[str, Any]
    details: dict[str, Any]
    item: str
    key: tuple[str, ...]  # (stage, version, config hash)

    @property
    def what(self) -> str:
        stage, version, config_hash = self.key
        return (
            f"stage {stage}'s result (version {version}, config {config_hash}) for item {self.item}"
        )

    def node_id(self, kind: str) -> str:
        """The IRI Qarina gives this result's `kind` node."""
        if kind == "AnalyticResult":
            return iri(kind, self.item, *self.key)
        return iri(kind, "result", self.item, *self.key)


def _stored_results(custody: Custody) -> dict[str, _Stored]:
    """The exported items' results as custody records them, by their action's IRI."""
    stored: dict[str, _Stored] = {}
    for event in custody.events:
        if event["item_sha256"] not in custody.exported or event["action"] not in RESULT_ACTIONS:
            continue
        try:
            details = json.loads(event["details_text"])
        except ValueError:
            details = None
        if not isinstance(details, dict):
            raise BundleProblem(f"custody event {event['seq']}'s details are not a JSON object")
        key = stored_key(event["action"], event["stage"], details)
        if key is not None:
            result = _Stored(event, details, event["item_sha256"], key)
            stored[result.node_id("InvestigativeAction")] = result
    return stored


def _result_data(graph: _Graph, action: dict[str, Any], result: _Stored) -> Any:
    """The result's data payload, once it hashes to the SHA-256 its custody event recorded,
    parsed; its derived files checked against the event's."""
    seq = result.event["seq"]
    outputs = graph.linked(action, "uco-action:result")
    data_id = result.node_id("ContentData")
    if [node["@id"] for node in outputs if graph.is_a(node, "uco-observable:ContentData")] != [
        data_id
    ]:
        raise BundleProblem(f"{GRAPH}: {result.what} does not give the data custody stored")
    payloads = [
        str(payload)
        for facet in graph.linked(graph.nodes[data_id], "uco-core:hasFacet")
        for payload in graph.values(facet, "uco-observable:dataPayload")
    ]
    if len(payloads) != 1:
        raise BundleProblem(f"{GRAPH}: {result.what} has {len(payloads)} data payloads, not one")
    recorded = result.details.get("result_sha256")
    digest = hashlib.sha256(payloads[0].encode()).hexdigest()
    if digest != recorded:
        raise BundleProblem(
            f"{GRAPH}: the data of {result.what} hashes to {digest}; custody event {seq}"
            f" recorded {recorded} when it stored it: the data was altered"
        )
    if any(sha256 != recorded for sha256 in graph.sha256s(graph.nodes[data_id])):
        raise BundleProblem(f"{GRAPH} gives another SHA-256 for the data of {result.what}")
    files = [graph.sha256s(node) for node in outputs if graph.is_a(node, "uco-observable:File")]
    if any(len(set(hashes)) != 1 for hashes in files) or {hashes[0] for hashes in files} != set(
        result.details.get("artifacts") or []
    ):
        raise BundleProblem(
            f"{GRAPH}: the derived files of {result.what} are not those custody event {seq}"
            " recorded"
        )
    return json.loads(payloads[0])


def _check_views(
    graph: _Graph, action: dict[str, Any], result: _Stored, data: Any
) -> tuple[str | None, str | None]:
    """The AnalyticResult of a transcript or metadata, and its Location, against the data
    they are rebuilt from; their IRIs (None where there is none)."""
    stage = result.key[0]
    analytic_id = result.node_id("AnalyticResult")
    analytics = [
        node["@id"]
        for node in graph.linked(action, "uco-action:result")
        if graph.is_a(node, "uco-analysis:AnalyticResult")
    ]
    readable = (
        result.event["action"] == "result" and stage in READABLE_STAGES and isinstance(data, dict)
    )
    if analytics != ([analytic_id] if readable else []):
        raise BundleProblem(
            f"{GRAPH}: {result.what} does not give the readable result its data makes"
        )
    if not readable:
        return None, None
    analytic = graph.nodes[analytic_id]
    said = sorted(str(value) for value in graph.values(analytic, "uco-core:statement"))
    if said != sorted(statements(stage, data)):
        raise BundleProblem(
            f"{GRAPH}: what {analytic_id} states is not what the data of {result.what} says"
        )
    gps = data.get("gps") if stage == "metadata" else None
    location_id = iri("Location", analytic_id)
    places = [
        node
        for node in graph.linked(analytic, "uco-analysis:resultContent")
        if graph.is_a(node, "uco-location:Location")
    ]
    if [node["@id"] for node in places] != ([location_id] if gps else []):
        raise BundleProblem(f"{GRAPH}: {analytic_id} gives a place the data of {result.what} lacks")
    if not gps:
        return analytic_id, None
    facets = graph.linked(places[0], "uco-core:hasFacet")
    if len(facets) != 1:
        raise BundleProblem(f"{GRAPH}: {location_id} has {len(facets)} facets, not one")
    facet = facets[0]
    for axis, name in (("lat", "latitude"), ("lon", "longitude"), ("alt", "altitude")):
        expected = decimal_text(gps.get(axis))
        stated = [str(value) for value in graph.values(facet, f"uco-location:{name}")]
        if stated != ([] if expected is None else [expected]):
            raise BundleProblem(
                f"{GRAPH}: the {name} of {location_id} is not the one the data of"
                f" {result.what} gives"
            )
    return analytic_id, location_id


def _check_exif(graph: _Graph, custody: Custody, raws: dict[str, list[dict[str, str]]]) -> int:
    """Each item's EXIF entries against the raw record of one of its metadata results."""
    checked = 0
    for sha256 in custody.items:
        item = graph.node(iri("File", sha256), f"the File of item {sha256}")
        for facet in graph.linked(item, "uco-core:hasFacet"):
            if not graph.is_a(facet, "uco-observable:EXIFFacet"):
                continue
            for dictionary in graph.linked(facet, "uco-observable:exifData"):
                entries = {
                    str(next(iter(graph.values(entry, "uco-types:key")), "")): str(
                        next(iter(graph.values(entry, "uco-types:value")), "")
                    )
                    for entry in graph.linked(dictionary, "uco-types:entry")
                }
                if entries not in raws.get(sha256, []):
                    raise BundleProblem(
                        f"{GRAPH}: the EXIF entries of item {sha256} are not the record of"
                        " any of its metadata results custody recorded"
                    )
                checked += 1
    return checked


def check_results(graph: _Graph, custody: Custody) -> str:
    """Each result's data, derived files and readable views against the custody event that
    stored it (see the module's docstring, step 3)."""
    stored = _stored_results(custody)
    checked: set[str] = set()
    raws: dict[str, list[dict[str, str]]] = {}
    for action in graph.of_type("uco-analysis:Analysis"):
        result = stored.get(action["@id"])
        if result is None:
            raise BundleProblem(
                f"{GRAPH}: the result {action['@id']}"
                f" ({'/'.join(map(str, graph.values(action, 'uco-core:name')))}) was stored"
                f" by no custody event {CUSTODY} holds"
            )
        data = _result_data(graph, action, result)
        views = _check_views(graph, action, result, data)
        checked.update(
            node for node in (action["@id"], result.node_id("ContentData"), *views) if node
        )
        if result.key[0] == "metadata" and isinstance(data, dict):
            raws.setdefault(result.item, []).append(exif_entries(data.get("raw") or {}))
    for action_id, result in stored.items():
        if action_id not in checked:
            raise BundleProblem(
                f"{GRAPH} leaves out {result.what}, which custody event {result.event['seq']}"
                " stored"
            )
    for kind in ("uco-analysis:AnalyticResult", "uco-location:Location"):
        for node in graph.of_type(kind):
            if node["@id"] not in checked:
                raise BundleProblem(f"{GRAPH}: {node['@id']} is not the view of any result")
    for node in graph.of_type("uco-observable:ContentData"):
        if node["@id"] not in checked and any(
            graph.values(facet, "uco-observable:dataPayload")
            for facet in graph.linked(node, "uco-core:hasFacet")
        ):
            raise BundleProblem(f"{GRAPH}: the data of {node['@id']} belongs to no stored result")
    exif = _check_exif(graph, custody, raws)
    return (
        f"{GRAPH}: the data and derived files of all {len(stored)} results match the hashes"
        " custody recorded when it stored them; their statements, places and EXIF entries"
        f" ({exif} items) are those the data gives"
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
        # An archive's member arriving again (propagate_arrival) records no size; its
        # first arrival did.
        size = json.loads(event["details_text"]).get("size_bytes")
        if size is not None and size != path.stat().st_size:
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


def check_manifest(bundle: Path, digests: dict[Path, str], expected: str | None = None) -> str:
    """Every file against MANIFEST.sha256, every file of the bundle in it, and the manifest
    itself against `expected`, the SHA-256 the sender gave apart from the bundle."""
    try:
        manifest = (bundle / MANIFEST).read_bytes()
        lines = manifest.decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise BundleProblem(f"{MANIFEST} cannot be read") from None
    listed: set[str] = set()
    for number, line in enumerate(lines, 1):
        match = _MANIFEST_LINE.fullmatch(line)
        if match is None:
            raise BundleProblem(f"{MANIFEST} line {number} is not a sha256sum line")
        stated, name = match.groups()
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or name == MANIFEST:
            raise BundleProblem(f"{MANIFEST} line {number} names a path outside the bundle")
        path = bundle / name
        if path.is_symlink() or not path.is_file():
            raise BundleProblem(f"{name}, listed in {MANIFEST}, is missing")
        if _digest(path, digests) != stated:
            raise BundleProblem(f"{name} does not match its SHA-256 in {MANIFEST}")
        listed.add(name)
    for path in sorted(bundle.rglob("*")):
        name = path.relative_to(bundle).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if name != MANIFEST and name not in listed:
            raise BundleProblem(f"{name} is in the bundle but not in {MANIFEST}")
    said = f"{MANIFEST}: all {len(listed)} files match, and no file is left out of it"
    digest = hashlib.sha256(manifest).hexdigest()
    if expected is None:
        return (
            f"{said}; its own SHA-256 is {digest}: compare it with the one the sender gave"
            " apart from the bundle (--manifest-sha256 does)"
        )
    if digest != expected.lower():
        raise BundleProblem(
            f"{MANIFEST} hashes to {digest}, not to {expected.lower()}, the SHA-256 given with"
            " --manifest-sha256: this is not the bundle that was sent, or it was remade"
        )
    return f"{said}; it hashes to {digest}, the SHA-256 the sender gave"


def verify(bundle: Path, say: Callable[[str], None], manifest_sha256: str | None = None) -> Custody:
    """Every check, in order; `say` hears each one passed. `manifest_sha256`: the SHA-256 of
    MANIFEST.sha256 the sender gave apart from the bundle, checked when given.

    Raises:
        BundleProblem: the first problem found.
    """
    custody = read_custody(bundle)
    say(check_custody(custody))
    graph, said = check_graph(bundle, custody)
    say(said)
    say(check_results(graph, custody))
    digests: dict[Path, str] = {}
    say(check_files(bundle, custody, graph, digests))
    say(check_manifest(bundle, digests, manifest_sha256))
    return custody


def sha256_hex(text: str) -> str:
    """A SHA-256 given on the command line, in lower case.

    Raises:
        ValueError: it is not 64 hex digits.
    """
    if not _HEX64.fullmatch(text.lower()):
        raise ValueError(f"not a SHA-256 (64 hex digits): {text}")
    return text.lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", nargs="?", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument(
        "--manifest-sha256",
        metavar="HEX",
        help=f"the SHA-256 of {MANIFEST} the sender gave apart from the bundle",
    )
    arguments = parser.parse_args(argv)
    bundle, manifest_sha256 = arguments.bundle, arguments.manifest_sha256
    try:
        manifest_sha256 = None if manifest_sha256 is None else sha256_hex(manifest_sha256)
    except ValueError as error:
        parser.error(str(error))
    try:
        verify(bundle, print, manifest_sha256)
    except BundleProblem as problem:
        print(f"FAILED: {problem}")
        return 1
    print(f"bundle verified: {bundle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
