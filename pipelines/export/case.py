"""Exported items as CASE/UCO JSON-LD, the graph courts' and forensic labs' tools read.

The vocabulary is CASE 1.5.0 and UCO 1.5.0: the ontology case-utils 0.18 (`case_validate`)
checks against. What each thing of Qarina becomes:

- an item: a `uco-observable:File` with a FileFacet (size; its path in the bundle when its
  bytes are there), a ContentDataFacet (SHA-256 as `uco-types:Hash`, MIME type) and, from its
  current metadata result, an EXIFFacet holding exiftool's raw record;
- an acquisition: a `case-investigation:InvestigativeAction` performed by the operator, with
  the source as participant, Qarina as instrument, the file as it arrived (name, path,
  modification time) as object and the item as result; source, priority and request are its
  ActionArgumentFacets;
- a stage's result: an InvestigativeAction that is also a `uco-analysis:Analysis`: the stage as
  a `uco-tool:ConfiguredTool` (version, options and config hash as its Configuration) and each
  tool and model its provenance names as a `uco-tool:Tool` are instruments; the item and the
  upstream results it read are objects; its results are the data (a `uco-observable:ContentData`
  with the JSON payload and its SHA-256), the derived files (keyframes, WebVTT, SubRip) and,
  for transcripts and metadata, a `uco-analysis:AnalyticResult` a person can read (the text;
  capture time, device, flags, and the place as a `uco-location:Location`);
- a near-duplicate link: a `uco-core:Relationship` "Near_Duplicate_Of", not directional; an
  archive's member: "Contained_Within" the archive;
- a custody event: a `case-investigation:ProvenanceRecord` grouping the item, what the event
  concerns and a `uco-core:Event` whose attribute dictionary holds every hashed field exactly as
  stored, so each event's hash can be recomputed from the graph alone.

Every node's IRI is `kb:<Class>-<UUID>`, the UUID derived (version 5) from what identifies the
thing: a file's SHA-256, a result's key, a custody event's hash. Exporting again gives the same
IRIs and the same triples, plus those of custody events recorded since; two stores' exports of
the same bytes name the same File.

UCO 1.5 has no property for a match's distance or for where in each file it was seen; four
terms of Qarina's own carry them (`qarina:distance`, `qarina:algorithm`,
`qarina:sourceTimeSeconds`, `qarina:targetTimeSeconds`), as CASE's own drafts do for terms not
yet in the ontology.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evidence.custody import StoredEvent, canonical_json
from evidence.matches import Link
from pipelines.export.verify_bundle import (
    FILES,
    KB,
    READABLE_STAGES,
    as_text,
    decimal_text,
    exif_entries,
    iri,
    statements,
)

VOCABULARY = "urn:qarina:vocabulary:"
SPEC_VERSION = "CASE 1.5.0"
_UCO = "https://ontology.unifiedcyberontology.org/uco/"
_UCO_PARTS = (
    "action", "analysis", "configuration", "core", "identity", "location", "observable",
    "tool", "types",
)  # fmt: skip
CONTEXT: dict[str, str] = {
    "kb": KB,
    "qarina": VOCABULARY,
    "case-investigation": "https://ontology.caseontology.org/case/investigation/",
    **{f"uco-{part}": f"{_UCO}{part}/" for part in _UCO_PARTS},
    "xsd": "http://www.w3.org/2001/XMLSchema#",
}
Node = dict[str, Any]


def _ref(node_id: str) -> dict[str, str]:
    return {"@id": node_id}


def _time(iso: str | None) -> dict[str, str] | None:
    return None if iso is None else {"@type": "xsd:dateTime", "@value": iso}


def _decimal(value: float | None) -> dict[str, str] | None:
    """A decimal literal: JSON numbers with a fraction read as xsd:double, which UCO's
    shapes refuse where they ask for xsd:decimal."""
    text = decimal_text(value)
    return None if text is None else {"@type": "xsd:decimal", "@value": text}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


class Graph:
    """Nodes by IRI. A node added again (a file that is one item and another's neighbour,
    a tool many results used) is merged with what is there, never duplicated."""

    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def add(self, node: Node) -> str:
        """Add `node` (properties that are None or empty are left out); its IRI."""
        kept = {name: value for name, value in node.items() if value not in (None, [], "")}
        existing = self._nodes.setdefault(kept["@id"], {})
        for name, value in kept.items():
            if name not in existing or existing[name] == value:
                existing[name] = value
                continue
            merged = {canonical_json(item): item for item in _as_list(existing[name])}
            merged.update((canonical_json(item), item) for item in _as_list(value))
            existing[name] = [merged[key] for key in sorted(merged)]
        return str(kept["@id"])

    def document(self) -> dict[str, Any]:
        return {"@context": CONTEXT, "@graph": [self._nodes[key] for key in sorted(self._nodes)]}


@dataclass(frozen=True)
class ItemExport:
    """One item as the store gives it: `Store.show`'s record, its custody trail, its links."""

    record: dict[str, Any]
    trail: Sequence[StoredEvent]
    links: Sequence[Link]


def _result_key(result: Mapping[str, Any]) -> tuple[str, str, str]:
    return (result["stage"], result["stage_version"], result["config_hash"])


class _Builder:
    def __init__(self, media: bool) -> None:
        self.graph = Graph()
        self.media = media

    # Shared nodes: hashes, people and programs, files.

    def hash(self, sha256: str) -> str:
        return self.graph.add(
            {
                "@id": iri("Hash", "SHA256", sha256),
                "@type": "uco-types:Hash",
                "uco-types:hashMethod": "SHA256",
                "uco-types:hashValue": {"@type": "xsd:hexBinary", "@value": sha256},
            }
        )

    def identity(self, role: str, name: str) -> str:
        return self.graph.add(
            {
                "@id": iri("Identity", role, name),
                "@type": "uco-identity:Identity",
                "uco-core:name": name,
                "uco-core:description": f"{role} as Qarina records it",
            }
        )

    def tool(
        self,
        name: str,
        version: str | None = None,
        tool_type: str | None = None,
        sha256: str | None = None,
    ) -> str:
        tool_id = iri("Tool", name, version or "", sha256 or "")
        facets = []
        if sha256 is not None:
            facets.append(self.content_facet(tool_id, sha256))
        return self.graph.add(
            {
                "@id": tool_id,
                "@type": "uco-tool:Tool",
                "uco-core:name": name,
                "uco-tool:version": version,
                "uco-tool:toolType": tool_type,
                "uco-core:hasFacet": facets,
            }
        )

    def content_facet(
        self, owner: str, sha256: str, size: int | None = None, mime: str | None = None
    ) -> dict[str, str]:
        return _ref(
            self.graph.add(
                {
                    "@id": iri("ContentDataFacet", owner),
                    "@type": "uco-observable:ContentDataFacet",
                    "uco-observable:hash": _ref(self.hash(sha256)),
                    "uco-observable:sizeInBytes": size,
                    "uco-observable:mimeType": mime,
                }
            )
        )

    def file(
        self,
        sha256: str,
        size: int | None = None,
        mime: str | None = None,
        description: str | None = None,
        shipped: bool = False,
    ) -> str:
        """The File of some bytes: an item, an artifact, or the other side of a link (then
        known by its hash alone). `shipped`: its bytes are in the bundle's files/."""
        file_id = iri("File", sha256)
        facets = [self.content_facet(file_id, sha256, size, mime)]
        if size is not None:
            file_facet = {
                "@id": iri("FileFacet", file_id),
                "@type": "uco-observable:FileFacet",
                "uco-observable:sizeInBytes": size,
                "uco-observable:filePath": f"{FILES}/{sha256}" if shipped else None,
            }
            facets.append(_ref(self.graph.add(file_facet)))
        return self.graph.add(
            {
                "@id": file_id,
                "@type": "uco-observable:File",
                "uco-core:description": description,
                "uco-core:hasFacet": facets,
            }
        )

    # What one item brings.

    def item(self, export: ItemExport) -> str:
        record = export.record
        sha256 = record["sha256"]
        probe = record["results"].get("probe", {}).get("data") or {}
        item_id = self.file(
            sha256,
            record["size_bytes"],
            probe.get("mime"),
            f"evidence item ({record['kind'] or 'kind not known yet'}) stored by Qarina",
            shipped=self.media,
        )
        concerned: dict[tuple[object, ...], str] = {
            ("acquisition", acquisition["id"]): self.acquisition(item_id, sha256, acquisition)
            for acquisition in record["acquisitions"]
        }
        performers = {
            concern: event.actor
            for event in export.trail
            if (concern := _concerns(event)) is not None
            and concern[0] == "result"
            and not event.details.get("already_stored")
        }
        every_result = [
            *((result, True) for result in record["results"].values()),
            *((result, False) for result in record["superseded"]),
        ]
        keys = {_result_key(result) for result, _ in every_result}
        for result, current in every_result:
            key = ("result", *_result_key(result))
            concerned[key] = self.result(
                item_id, sha256, result, current, performers.get(key), keys
            )
        for link in export.links:
            key = ("link", link.a_sha256, link.b_sha256, link.kind)
            concerned[key] = self.near_duplicate(link)
        for member in record["archive_members"]:
            self.contained(member["sha256"], sha256, member)
        for archive in record["found_in_archives"]:
            self.contained(sha256, archive["archive_sha256"], archive)
        for event in export.trail:
            concern = _concerns(event)
            self.custody(item_id, event, None if concern is None else concerned.get(concern))
        return item_id

    def acquisition(self, item_id: str, sha256: str, acquisition: Mapping[str, Any]) -> str:
        key = (sha256, acquisition["id"], acquisition["acquired_at"])
        arrived = iri("File", "arrival", *key)
        file_facet = {
            "@id": iri("FileFacet", arrived),
            "@type": "uco-observable:FileFacet",
            "uco-observable:fileName": acquisition["original_name"],
            "uco-observable:filePath": acquisition["original_path"],
            "uco-observable:modifiedTime": _time(acquisition["original_mtime"]),
        }
        source = acquisition["source"]
        self.graph.add(
            {
                "@id": arrived,
                "@type": "uco-observable:File",
                "uco-core:description": f"the file as it arrived from source «{source}»",
                "uco-core:hasFacet": [
                    _ref(self.graph.add(file_facet)),
                    self.content_facet(arrived, sha256),
                ],
            }
        )
        action_id = iri("InvestigativeAction", "acquisition", *key)
        arguments = {
            "source": source,
            "priority": str(acquisition["priority"]),
            "request": acquisition["request_ref"],
            "acquisition id": str(acquisition["id"]),
            "original name (hex)": acquisition["original_name_hex"],
        }
        facets = self.named_values(
            "uco-action:ActionArgumentFacet",
            action_id,
            ("uco-action:argumentName", "uco-action:value"),
            arguments,
        )
        return self.graph.add(
            {
                "@id": action_id,
                "@type": "case-investigation:InvestigativeAction",
                "uco-core:name": "acquisition",
                "uco-core:description": f"arrival {acquisition['id']} of the item, from «{source}»",
                "uco-action:startTime": _time(acquisition["acquired_at"]),
                "uco-action:performer": _ref(self.identity("operator", acquisition["operator"])),
                "uco-action:participant": _ref(self.identity("source", source)),
                "uco-action:instrument": _ref(self.tool("Qarina", tool_type="evidence intake")),
                "uco-action:object": _ref(arrived),
                "uco-action:result": _ref(item_id),
                "uco-core:hasFacet": facets,
            }
        )

    def named_values(
        self,
        node_type: str,
        owner: str,
        properties: tuple[str, str],
        values: Mapping[str, str | None],
    ) -> list[dict[str, str]]:
        """One node of `node_type` (an action's arguments, a tool's configuration entries)
        per value that is set, named under its owner so a second export names it alike."""
        name_property, value_property = properties
        return [
            _ref(
                self.graph.add(
                    {
                        "@id": iri(node_type.partition(":")[2], owner, name),
                        "@type": node_type,
                        name_property: name,
                        value_property: value,
                    }
                )
            )
            for name, value in values.items()
            if value is not None
        ]

    def stage_tool(self, result: Mapping[str, Any], provenance: Mapping[str, Any]) -> str:
        """The stage, configured: its version, and its options and config hash as entries."""
        stage, version, config_hash = _result_key(result)
        tool_id = iri("ConfiguredTool", stage, version, config_hash)
        configuration_id = iri("Configuration", tool_id)
        settings = {
            "config_hash": config_hash,
            "options_hash": provenance.get("options_hash"),
            **{
                f"params.{name}": as_text(value)
                for name, value in (provenance.get("params") or {}).items()
            },
        }
        entries = self.named_values(
            "uco-configuration:ConfigurationEntry",
            configuration_id,
            ("uco-configuration:itemName", "uco-configuration:itemValue"),
            settings,
        )
        self.graph.add(
            {
                "@id": configuration_id,
                "@type": "uco-configuration:Configuration",
                "uco-configuration:configurationEntry": entries,
            }
        )
        return self.graph.add(
            {
                "@id": tool_id,
                "@type": "uco-tool:ConfiguredTool",
                "uco-core:name": f"Qarina stage {stage}",
                "uco-tool:version": version,
                "uco-tool:toolType": "processing stage",
                "uco-configuration:usesConfiguration": _ref(configuration_id),
            }
        )

    def result(
        self,
        item_id: str,
        sha256: str,
        result: Mapping[str, Any],
        current: bool,
        performer: str | None,
        item_keys: set[tuple[str, str, str]],
    ) -> str:
        stage, version, config_hash = _result_key(result)
        action_id = iri("InvestigativeAction", "result", sha256, stage, version, config_hash)
        data = result["data"]
        payload = canonical_json(data)
        data_id = iri("ContentData", "result", sha256, stage, version, config_hash)
        self.graph.add(
            {
                "@id": data_id,
                "@type": "uco-observable:ContentData",
                "uco-core:description": f"the data of stage {stage}'s result, as stored (JSON)",
                "uco-core:hasFacet": _ref(
                    self.graph.add(
                        {
                            "@id": iri("ContentDataFacet", data_id),
                            "@type": "uco-observable:ContentDataFacet",
                            "uco-observable:dataPayload": payload,
                            "uco-observable:mimeType": "application/json",
                            "uco-observable:sizeInBytes": len(payload.encode()),
                            "uco-observable:hash": _ref(self.hash(result["data_sha256"])),
                        }
                    )
                ),
            }
        )
        provenance: Mapping[str, Any] = result["provenance"] or {}
        instruments = [self.stage_tool(result, provenance)]
        instruments += [
            self.tool(name, as_text(version), "program")
            for name, version in sorted((provenance.get("tools") or {}).items())
        ]
        if provenance.get("qarina"):
            instruments.append(self.tool("Qarina", str(provenance["qarina"]), "program"))
        model = data.get("model") if isinstance(data, dict) else None
        if isinstance(model, dict) and model.get("name"):
            instruments.append(self.tool(str(model["name"]), None, "model", model.get("sha256")))
        reads = [
            _ref(
                iri(
                    "ContentData",
                    "result",
                    sha256,
                    upstream,
                    read["stage_version"],
                    read["config_hash"],
                )
            )
            for upstream, read in sorted((provenance.get("reads") or {}).items())
            if (upstream, read.get("stage_version"), read.get("config_hash")) in item_keys
        ]
        artifacts = [
            self.file(
                artifact["sha256"],
                artifact["size_bytes"],
                artifact["media_type"],
                _artifact_description(artifact, sha256),
                shipped=self.media,
            )
            for artifact in result["artifacts"]
        ]
        analytic = self.analytic_result(action_id, sha256, result, [data_id, *artifacts])
        if current and stage == "metadata" and result["status"] == "ok":
            self.exif(item_id, data.get("raw") or {})
        skipped = f"; skipped: {result['skip_reason']}" if result["skip_reason"] else ""
        superseded = "" if current else "; superseded: the current plan names another key"
        return self.graph.add(
            {
                "@id": action_id,
                "@type": ["case-investigation:InvestigativeAction", "uco-analysis:Analysis"],
                "uco-core:name": f"{stage} v{version}",
                "uco-core:description": (
                    f"Qarina stage {stage}, version {version}, config {config_hash}"
                    f"{skipped}{superseded}"
                ),
                "uco-core:tag": None if current else "superseded",
                "uco-core:objectCreatedTime": _time(result["created_at"]),
                "uco-action:actionStatus": "Success"
                if result["status"] == "ok"
                else "Complete/Finish",
                "uco-action:startTime": _time(provenance.get("started_at")),
                "uco-action:endTime": _time(provenance.get("finished_at")),
                "uco-action:performer": None
                if performer is None
                else _ref(self.identity("actor", performer)),
                "uco-action:instrument": [_ref(tool) for tool in instruments],
                "uco-action:object": [_ref(item_id), *reads],
                "uco-action:result": [
                    _ref(data_id),
                    *(_ref(artifact) for artifact in artifacts),
                    *([] if analytic is None else [_ref(analytic)]),
                ],
            }
        )

    def analytic_result(
        self, action_id: str, sha256: str, result: Mapping[str, Any], content: list[str]
    ) -> str | None:
        """What a person reads of a transcript (its text) or of metadata (capture time,
        device, place, flags); None for other stages, whose data is for machines. The
        statements and the place are rebuilt from the data by verify_bundle.py."""
        stage, data = result["stage"], result["data"]
        if result["status"] != "ok" or stage not in READABLE_STAGES:
            return None
        result_id = iri("AnalyticResult", sha256, *_result_key(result))
        if stage == "transcript":
            segments = data.get("segments") or []
            description = (
                f"transcript ({data.get('language')}): {len(segments)} segments,"
                f" {data.get('flagged_segments', 0)} marked doubtful; times in the WebVTT file"
            )
            tags = [f"language:{data.get('language')}", *data.get("flags", [])]
        else:
            description = "capture metadata as normalised from exiftool's record"
            tags = list(data.get("flags", []))
            if data.get("gps"):
                content = [*content, self.location(result_id, data["gps"])]
        return self.graph.add(
            {
                "@id": result_id,
                "@type": "uco-analysis:AnalyticResult",
                "uco-analysis:originatingAnalysis": _ref(action_id),
                "uco-analysis:resultContent": [_ref(node) for node in content],
                "uco-core:statement": statements(stage, data),
                "uco-core:description": description,
                "uco-core:tag": tags,
            }
        )

    def location(self, owner: str, gps: Mapping[str, float | None]) -> str:
        location_id = iri("Location", owner)
        facet = {
            "@id": iri("LatLongCoordinatesFacet", location_id),
            "@type": "uco-location:LatLongCoordinatesFacet",
            "uco-location:latitude": _decimal(gps.get("lat")),
            "uco-location:longitude": _decimal(gps.get("lon")),
            "uco-location:altitude": _decimal(gps.get("alt")),
        }
        return self.graph.add(
            {
                "@id": location_id,
                "@type": "uco-location:Location",
                "uco-core:description": "where the file's metadata says it was recorded",
                "uco-core:hasFacet": _ref(self.graph.add(facet)),
            }
        )

    def exif(self, item_id: str, raw: Mapping[str, Any]) -> None:
        """exiftool's raw record, tag by tag, as the item's EXIFFacet."""
        if not raw:
            return
        dictionary_id = iri("ControlledDictionary", "exif", item_id)
        entries = [
            _ref(
                self.graph.add(
                    {
                        "@id": iri("ControlledDictionaryEntry", dictionary_id, tag),
                        "@type": "uco-types:ControlledDictionaryEntry",
                        "uco-types:key": tag,
                        "uco-types:value": value,
                    }
                )
            )
            for tag, value in sorted(exif_entries(raw).items())
        ]
        self.graph.add(
            {
                "@id": dictionary_id,
                "@type": "uco-types:ControlledDictionary",
                "uco-types:entry": entries,
            }
        )
        facet_id = self.graph.add(
            {
                "@id": iri("EXIFFacet", item_id),
                "@type": "uco-observable:EXIFFacet",
                "uco-observable:exifData": _ref(dictionary_id),
            }
        )
        self.graph.add({"@id": item_id, "uco-core:hasFacet": [_ref(facet_id)]})

    def near_duplicate(self, link: Link) -> str:
        times = [
            f"at {time:g} s in {side}"
            for time, side in ((link.a_time_s, "the source"), (link.b_time_s, "the target"))
            if time is not None
        ]
        return self.graph.add(
            {
                "@id": iri(
                    "Relationship", "near-duplicate", link.a_sha256, link.b_sha256, link.kind
                ),
                "@type": "uco-core:Relationship",
                "uco-core:source": _ref(self.file(link.a_sha256)),
                "uco-core:target": _ref(self.file(link.b_sha256)),
                "uco-core:isDirectional": False,
                "uco-core:kindOfRelationship": "Near_Duplicate_Of",
                "uco-core:description": (
                    f"{link.kind} near-duplicate found by {link.algorithm}, distance"
                    f" {link.distance:g}{'; seen ' + ', '.join(times) if times else ''};"
                    f" details {canonical_json(link.details)}"
                ),
                "qarina:distance": _decimal(link.distance),
                "qarina:algorithm": link.algorithm,
                "qarina:sourceTimeSeconds": _decimal(link.a_time_s),
                "qarina:targetTimeSeconds": _decimal(link.b_time_s),
            }
        )

    def contained(self, member: str, archive: str, entry: Mapping[str, Any]) -> str:
        return self.graph.add(
            {
                "@id": iri("Relationship", "contained-within", member, archive, entry["path_hex"]),
                "@type": "uco-core:Relationship",
                "uco-core:source": _ref(self.file(member)),
                "uco-core:target": _ref(self.file(archive)),
                "uco-core:isDirectional": True,
                "uco-core:kindOfRelationship": "Contained_Within",
                "uco-core:description": (
                    f"found at «{entry['path']}» in the archive, {entry['depth']} deep"
                ),
            }
        )

    def custody(self, item_id: str, event: StoredEvent, related: str | None) -> None:
        event_id = iri("Event", event.event_hash)
        dictionary_id = iri("ProperDictionary", event_id)
        entries = [
            _ref(
                self.graph.add(
                    {
                        "@id": iri("DictionaryEntry", dictionary_id, name),
                        "@type": "uco-types:DictionaryEntry",
                        "uco-types:key": name,
                        "uco-types:value": str(value),
                    }
                )
            )
            for name, value in dataclasses.asdict(event).items()
            if value is not None
        ]
        self.graph.add(
            {
                "@id": dictionary_id,
                "@type": "uco-types:ProperDictionary",
                "uco-types:entry": entries,
            }
        )
        what = f"{event.action}{f' ({event.stage})' if event.stage else ''}"
        self.graph.add(
            {
                "@id": event_id,
                "@type": "uco-core:Event",
                "uco-core:eventType": event.action,
                "uco-core:startTime": _time(event.at_iso),
                "uco-core:eventContext": [
                    _ref(item_id),
                    _ref(self.identity("actor", event.actor)),
                ],
                "uco-core:eventAttribute": _ref(dictionary_id),
                "uco-core:description": (
                    f"custody event {event.seq}: {what} by {event.actor}; the attribute"
                    " dictionary holds every field its hash covers, as stored"
                ),
            }
        )
        self.graph.add(
            {
                "@id": iri("ProvenanceRecord", event.event_hash),
                "@type": "case-investigation:ProvenanceRecord",
                "uco-core:name": f"custody event {event.seq}",
                "uco-core:description": f"{what} by {event.actor} at {event.at_iso}",
                "uco-core:object": [
                    _ref(node) for node in (item_id, event_id, related) if node is not None
                ],
            }
        )


def _concerns(event: StoredEvent) -> tuple[object, ...] | None:
    """What a custody event is about, as the graph keys it: the arrival it recorded, the
    result it committed, the link it made; None for other events."""
    details = event.details
    if event.action == "ingest":
        return ("acquisition", details.get("acquisition_id"))
    if event.action in ("result", "skip"):
        return ("result", event.stage, details.get("stage_version"), details.get("config_hash"))
    if event.action == "link":
        return ("link", details.get("a_sha256"), details.get("b_sha256"), details.get("kind"))
    return None


def _artifact_description(artifact: Mapping[str, Any], parent: str) -> str:
    meta = artifact.get("meta") or {}
    if artifact["role"] == "keyframe" and "t" in meta:
        return f"keyframe at {meta['t']:g} s (frame {meta.get('frame_index')}) of item {parent}"
    return (
        f"{artifact['role']} ({artifact['media_type']}) made by stage {artifact['stage']}"
        f" from item {parent}"
    )


def case_document(items: Iterable[ItemExport], media: bool) -> dict[str, Any]:
    """The JSON-LD document of `items`; `media`: their files' bytes go into the bundle."""
    builder = _Builder(media)
    item_ids = [builder.item(export) for export in items]
    shas = sorted(export_id for export_id in item_ids)
    builder.graph.add(
        {
            "@id": iri("Bundle", *shas),
            "@type": "uco-core:Bundle",
            "uco-core:name": "Qarina evidence export",
            "uco-core:specVersion": SPEC_VERSION,
            "uco-core:description": (
                f"{len(item_ids)} items with their acquisitions, processing results and"
                " derived files, near-duplicate links and custody"
            ),
            "uco-core:object": [_ref(item_id) for item_id in shas],
        }
    )
    return builder.graph.document()


def write_document(document: Mapping[str, Any]) -> bytes:
    """The document's bytes: the same document always gives the same bytes."""
    return (json.dumps(document, ensure_ascii=False, indent=1, sort_keys=True) + "\n").encode()
