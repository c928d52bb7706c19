"""`qarina export --format case`: a folder a court can take away and check without Qarina.

    bundle.jsonld      the items as CASE/UCO JSON-LD (pipelines/export/case.py)
    files/<sha256>     the originals and their derived files, copied from the blob store
                       (left out with --no-media; their hashes stay in the graph)
    custody.jsonl      a header line (what was exported, the chain head at export time),
                       then every custody event naming the items, each field as stored;
                       with --full-chain, the whole chain from its first event instead
    verify_bundle.py   the standalone checker (Python's standard library only)
    MANIFEST.sha256    `sha256sum` lines for every other file

The bundle is written in a hidden folder beside the target. Every blob is hashed while it
is copied and every file read back for the manifest: a copy that is not the stored bytes
stops the export. Only then is the export recorded in custody, one `export` event per item in
one transaction, naming the manifest's SHA-256 and the chain head the bundle is anchored to,
so that `qarina verify-bundle --against-store` can tell a bundle the store issued from a
forged one. Last, the folder is renamed into place. A crash before the record leaves no
bundle and no record; a crash between the record and the rename leaves the complete bundle
under its hidden name, recorded. Custody may then say more left the store than did, never
less. A bundle in place is always recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from evidence import custody
from evidence.blobs import CHUNK_BYTES, file_sha256
from evidence.custody import StoredEvent
from evidence.matches import links_of
from evidence.records import CurrentKeys
from evidence.schema import custody_events
from evidence.store import Store
from pipelines.export import verify_bundle
from pipelines.export.case import ItemExport, case_document, write_document
from pipelines.export.verify_bundle import (
    CUSTODY,
    FILES,
    GRAPH,
    HEADER_KEY,
    MANIFEST,
    SCRIPT,
    stored_key,
)

#: How often the chain head is read again when an exported item arrived after it was read
#: (an item exported while its ingest commits); more means items keep arriving under it.
_READ_TRIES = 3


class ExportError(Exception):
    """The export cannot be made as asked; nothing was written in the target's place."""


@dataclass(frozen=True)
class BundleReport:
    path: Path
    items: int
    events: int
    files: int
    manifest_sha256: str
    head_seq: int
    head_hash: str


def read_items(
    store: Store, current: CurrentKeys, shas: Sequence[str]
) -> tuple[list[ItemExport], StoredEvent]:
    """What the graph is made of, as the store stood at the chain head it is anchored to.

    The head is read first, then the records, and each trail is cut at the head. A result
    committed after the head (its storing event is not in the trail) is left for the next
    export, so every result the graph gives has its storing event in the bundle and every
    such event its result: verify_bundle.py requires both. An item whose arrival committed
    after the head was read is in no trail: the head is then read again.

    Raises:
        ExportError: an item is not in the store, or items kept arriving under the head.
    """
    for _ in range(_READ_TRIES):
        with store.database.reader.connect() as connection:
            head = custody.chain_head(connection)
        if head is None:
            raise ExportError("the custody chain is empty")
        records = []
        for sha256 in shas:
            record = store.show(sha256, current)
            if record is None:
                raise ExportError(f"no item {sha256}")
            records.append(record)
        with store.database.reader.connect() as connection:
            trails = {
                sha256: [
                    event
                    for event in custody.item_trail(connection, sha256)
                    if event.seq <= head.seq
                ]
                for sha256 in shas
            }
        if all(trails.values()):
            break
    else:
        raise ExportError("items keep arriving faster than the export can read them; try again")
    exports = [
        ItemExport(
            _as_of(record, trails[record["sha256"]]),
            trails[record["sha256"]],
            links_of(store.database, record["sha256"]),
        )
        for record in records
    ]
    return exports, head


def _as_of(record: dict[str, Any], trail: Sequence[StoredEvent]) -> dict[str, Any]:
    """The record without the results whose storing event came after the chain head."""
    stored = {stored_key(event.action, event.stage, event.details) for event in trail}

    def kept(result: dict[str, Any]) -> bool:
        key = (result["stage"], str(result["stage_version"]), str(result["config_hash"]))
        return key in stored

    return {
        **record,
        "results": {stage: result for stage, result in record["results"].items() if kept(result)},
        "superseded": [result for result in record["superseded"] if kept(result)],
    }


def _copy_blob(store: Store, sha256: str, target: Path) -> None:
    """Copy a stored blob, hashing it on the way: the bundle gets the stored bytes or nothing."""
    source = store.blobs.path_for(sha256)
    if not source.is_file():
        raise ExportError(f"blob {sha256} is missing from the store (`qarina verify --fixity`)")
    hasher = hashlib.sha256()
    with source.open("rb") as reading, target.open("xb") as writing:
        while chunk := reading.read(CHUNK_BYTES):
            hasher.update(chunk)
            writing.write(chunk)
    if hasher.hexdigest() != sha256:
        raise ExportError(f"blob {sha256} no longer matches its hash (`qarina verify --fixity`)")
    target.chmod(0o444)


def _write_custody(
    path: Path,
    scope: str,
    shas: Sequence[str],
    head: StoredEvent,
    count: int,
    events: Iterable[StoredEvent],
) -> int:
    header = {
        HEADER_KEY: 1,
        "scope": scope,
        "items": list(shas),
        "events": count,
        "chain_head": {"seq": head.seq, "event_hash": head.event_hash},
        "event_hash": (
            "SHA-256 of the UTF-8 canonical JSON (sorted keys, no spaces, non-ASCII kept) of"
            " [seq, at_iso, actor, action, item_sha256, stage, details_text, prev_hash]"
        ),
    }
    written = 0
    with path.open("x", encoding="utf-8") as stream:
        stream.write(json.dumps(header, ensure_ascii=False) + "\n")
        for event in events:
            stream.write(json.dumps(dataclasses.asdict(event), ensure_ascii=False) + "\n")
            written += 1
    return written


def _manifest(folder: Path) -> bytes:
    """`sha256sum` lines for every file of the bundle, read back from disk; a copied blob
    that reads back other than its name says stops the export."""
    lines = []
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            continue
        name = path.relative_to(folder).as_posix()
        digest = file_sha256(path)
        if name.startswith(f"{FILES}/") and digest != path.name:
            raise ExportError(f"the copy of blob {path.name} does not read back as written")
        lines.append(f"{digest}  {name}\n")
    return "".join(lines).encode()


def _custody_in_bundle(
    store: Store, exports: Sequence[ItemExport], head: StoredEvent, full_chain: bool
) -> tuple[str, int, Iterable[StoredEvent]]:
    """(scope, count, events) custody.jsonl carries."""
    if not full_chain:
        events = sorted(
            (event for export in exports for event in export.trail), key=lambda e: e.seq
        )
        return "items", len(events), events
    with store.database.reader.connect() as connection:
        count = connection.execute(
            sa.select(sa.func.count())
            .select_from(custody_events)
            .where(custody_events.c.seq <= head.seq)
        ).scalar_one()

    def whole_chain() -> Iterator[StoredEvent]:
        with store.database.reader.connect() as connection:
            for event in custody.events(connection):
                if event.seq > head.seq:
                    return
                yield event

    return "chain", int(count), whole_chain()


def publish(work: Path, out: Path) -> None:
    """Rename the complete, recorded export into place.

    Raises:
        ExportError: the rename failed; the export, recorded in custody, stays complete
            under its hidden name, which the message gives.
    """
    try:
        work.rename(out)
    except OSError as error:
        raise ExportError(
            f"the export is complete and recorded in custody, but could not be renamed to"
            f" {out} ({error}): it is at {work}"
        ) from None


def export_case_bundle(
    store: Store,
    current: CurrentKeys,
    shas: Sequence[str],
    out: Path,
    actor: str,
    *,
    media: bool = True,
    full_chain: bool = False,
) -> BundleReport:
    """Write the bundle of `shas` to the new folder `out`, then record the export in custody.

    Raises:
        ExportError: `out` exists, an item is unknown, or a blob is missing or altered.
    """
    if out.exists():
        raise ExportError(f"{out} exists: a bundle is written to a new folder")
    if not out.parent.is_dir():
        raise ExportError(f"{out.parent} is not a folder")
    shas = sorted({sha256.lower() for sha256 in shas})
    if not shas:
        raise ExportError("no item to export")
    exports, head = read_items(store, current, shas)
    work = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    work.mkdir()
    try:
        (work / GRAPH).write_bytes(write_document(case_document(exports, media)))
        copied = 0
        if media:
            (work / FILES).mkdir()
            blobs = {export.record["sha256"] for export in exports} | {
                artifact["sha256"]
                for export in exports
                for result in [*export.record["results"].values(), *export.record["superseded"]]
                for artifact in result["artifacts"]
            }
            for sha256 in sorted(blobs):
                _copy_blob(store, sha256, work / FILES / sha256)
            copied = len(blobs)
        scope, count, events = _custody_in_bundle(store, exports, head, full_chain)
        written = _write_custody(work / CUSTODY, scope, shas, head, count, events)
        shutil.copyfile(Path(verify_bundle.__file__), work / SCRIPT)
        manifest = _manifest(work)
        (work / MANIFEST).write_bytes(manifest)
        manifest_sha256 = hashlib.sha256(manifest).hexdigest()
        details = {
            "format": "case",
            "bundle_manifest_sha256": manifest_sha256,
            "chain_head_seq": head.seq,
            "chain_head_hash": head.event_hash,
            "media": media,
            "full_chain": full_chain,
            "items": len(shas),
        }
        store.record_sharing("export", actor, ((sha256, details) for sha256 in shas))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    publish(work, out)
    return BundleReport(out, len(shas), written, copied, manifest_sha256, head.seq, head.event_hash)


def verify_against_store(store: Store, bundle: Path, copy: verify_bundle.Custody) -> list[str]:
    """What `verify-bundle --against-store` adds to the standalone checks: the store's chain
    verifies, every exported event stands unchanged at its seq there, the chain head the
    bundle names is the store's event at that seq, and the store recorded this very bundle's
    export (its manifest's SHA-256), which a forger rewriting events and manifest cannot.

    Raises:
        BundleProblem: the first disagreement.
    """
    problem = verify_bundle.BundleProblem
    manifest_sha256 = hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()
    wanted = {event["seq"]: event for event in copy.events}
    compared = 0
    with store.database.reader.connect() as connection:
        chain = custody.verify_chain(connection)
        if chain.first_break is not None:
            raise problem(
                f"the store's custody chain is broken at event {chain.first_break.seq}:"
                f" {chain.first_break.problem}"
            )
        for event in custody.events(connection):
            stated = wanted.get(event.seq)
            if stated is not None:
                if dataclasses.asdict(event) != stated:
                    raise problem(f"custody event {event.seq} differs from the store's")
                compared += 1
            if event.seq == copy.head_seq and event.event_hash != copy.head_hash:
                raise problem(
                    f"the chain head the bundle names is not the store's event {event.seq}"
                )
        if compared != len(wanted) or chain.events < copy.head_seq:
            raise problem("the bundle holds custody events the store's chain does not")
        recorded = [
            event
            for event in custody.item_trail(connection, copy.items[0])
            if event.action == "export"
            and event.details.get("bundle_manifest_sha256") == manifest_sha256
        ]
    if not recorded:
        raise problem(
            f"the store records no export of this bundle ({MANIFEST} hashes to {manifest_sha256})"
        )
    return [
        f"store: its custody chain verifies ({chain.events} events, head {chain.head_hash})",
        f"store: all {compared} custody events of the bundle stand unchanged at their seq, and"
        f" the chain head the bundle names (event {copy.head_seq}) is the store's",
        f"store: event {recorded[0].seq} recorded this bundle's export, by {recorded[0].actor}"
        f" at {recorded[0].at_iso}",
    ]
