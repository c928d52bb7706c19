"""`qarina demo`: a small mixed intake, end to end, on the embedded default (SQLite + local Ray)."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.table import Table

from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.dedup.reports import dupes_report
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.samples import audio, hostile, photos, videos
from pipelines.search import search_transcripts
from pipelines.session import open_store, process_queue
from workers.metadata import MetadataResult
from workers.transcript import TranscriptResult

_DAMASCUS = dt.timezone(dt.timedelta(hours=3))


def make_demo_set(folder: Path) -> tuple[Path, Path]:
    """Two 'sources' of material, overlapping by one photo (the same bytes from both)."""
    phone, drive = folder / "source-a-phone", folder / "source-b-drive"
    phone.mkdir()
    drive.mkdir()
    shared_photo = photos.photo(
        phone / "IMG_20240312_101500.jpg",
        seed=1,
        exif=photos.exif_bytes(
            make="Samsung",
            model="SM-A515F",
            datetime_original=dt.datetime(2024, 3, 12, 10, 15, tzinfo=_DAMASCUS),
            gps=(36.2021, 37.1343, 390.0),
        ),
    )
    photos.photo(
        phone / "IMG_20240312_101730.jpg",
        seed=2,
        exif=photos.exif_bytes(
            make="Apple",
            model="iPhone 11",
            datetime_original=dt.datetime(2024, 3, 12, 10, 17, 30, tzinfo=_DAMASCUS),
            gps=(-33.8688, -70.6693, 12.0),
            orientation=6,
        ),
    )
    photos.photo(phone / "forwarded.jpg", seed=3)  # messaging apps strip EXIF
    # A scene photographed once and passed on: resized and recompressed by a messaging app,
    # mirrored by one re-poster and trimmed by another. Linked as copies, never merged.
    scene = photos.scene(4, (1600, 1200))
    scene.save(phone / "IMG_20240312_102200.jpg", quality=92)
    scene.resize((800, 600)).save(drive / "IMG-20240313-WA0007.jpg", quality=60)
    scene.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(drive / "mirrored.jpg", quality=80)
    width, height = scene.size
    scene.crop((64, 24, width - 40, height - 60)).save(drive / "trimmed.jpg", quality=80)
    shutil.copyfile(shared_photo, drive / "copy of evidence.jpg")
    shutil.copyfile(phone / "forwarded.jpg", drive / "looks-like-a.png")
    video = videos.video_with_cuts(
        drive / "VID_0001.mp4",
        shots=3,
        seconds_per_shot=2,
        size="320x240",
        rate=25,
        audio=audio.speech(folder / "speech.wav"),
        tags={"creation_time": "2024-03-12T07:20:00Z", "location": "+36.2030+037.1360/"},
        preset="veryfast",
    )
    audio.speech(phone / "PTT-20240312-WA0004.opus", voice_format="whatsapp-opus")
    hostile.truncated_copy(video, drive / "VID_0002_partial.mp4", keep=0.02)
    hostile.html_page(drive / "saved-video.mp4")
    return phone, drive


def run_demo(config: QarinaConfig, sequential: bool, out: Console) -> None:
    store: Store = open_store(config)
    plan = Plan.default(settings=config)
    try:
        with tempfile.TemporaryDirectory(prefix="qarina-demo-") as scratch:
            phone, drive = make_demo_set(Path(scratch))
            first = ingest_paths(store, plan, config, [phone], source="demo-phone", priority=1)
            second = ingest_paths(
                store,
                plan,
                config,
                [drive],
                source="demo-drive",
                priority=5,
                request_ref="RFA-DEMO-1",
            )
        out.print(
            f"ingested {first.files + second.files} files:"
            f" {first.new_items + second.new_items} new items,"
            f" {first.duplicates + second.duplicates} already stored"
        )
        summary = process_queue(config, store, sequential, out)
        out.print(f"processed {summary.committed} jobs in {summary.wall_s:.1f} s")
        _print_items(store, plan, sorted(set(first.sha256s + second.sha256s)), out)
        _print_dupes(store, plan, out)
        _print_transcripts(store, plan, sorted(set(first.sha256s + second.sha256s)), out)
        report = store.verify(fixity=True, actor=f"qarina-demo@{config.operator}")
        verdict = "intact" if report.ok else "BROKEN"
        out.print(
            f"custody chain {verdict}: {report.chain.events} events; "
            f"{report.blobs_checked} blobs re-hashed, {len(report.fixity_problems)} problems"
        )
        out.print(f"data folder: {config.data_dir}  (try: qarina --data {config.data_dir} status)")
    finally:
        store.close()


def _print_items(store: Store, plan: Plan, shas: list[str], out: Console) -> None:
    table = Table("item", "kind", "arrivals", "captured", "gps", "device", "flags / failure")
    for sha in shas:
        record = store.show(sha, plan.current_keys())
        if record is None:
            continue
        stored = record["results"].get("metadata")
        metadata = MetadataResult.from_json(stored["data"]) if stored else None
        gps = metadata.gps if metadata else None
        device = (metadata.device if metadata else None) or {}
        failures = [f"{failure['stage']}: {failure['reason']}" for failure in record["failures"]]
        table.add_row(
            sha[:12],
            record["kind"] or "?",
            str(len(record["acquisitions"])),
            (metadata.captured_at if metadata else None) or "",
            f"{gps['lat']:.4f},{gps['lon']:.4f}" if gps else "",
            " ".join(filter(None, [device.get("make"), device.get("model")])),
            ", ".join((metadata.flags if metadata else []) + failures),
        )
    out.print(table)


def _print_transcripts(store: Store, plan: Plan, shas: list[str], out: Console) -> None:
    for sha in shas:
        record = store.show(sha, plan.current_keys()) or {}
        transcript = record.get("results", {}).get("transcript")
        if not transcript or transcript["status"] != "ok":
            continue
        data = TranscriptResult.from_json(transcript["data"])
        segments = "; ".join(
            f"{segment.start:.1f}-{segment.end:.1f} s «{segment.text}»"
            + (f" doubtful: {', '.join(segment.flags)}" if segment.flags else "")
            for segment in data.segments
        )
        out.print(
            f"transcript {sha[:12]} ({data.language}, {data.model.sha256[:12]}):"
            f" {segments or 'no speech'}"
        )
    hits = search_transcripts(store, plan, audio.GREETING)
    found = sorted({hit["sha256"][:12] for hit in hits})
    out.print(f"search «{audio.GREETING}»: {len(hits)} segments in {found}")


def _print_dupes(store: Store, plan: Plan, out: Console) -> None:
    report = dupes_report(store, plan.keys("hashes"))
    for number, cluster in enumerate(report["clusters"], 1):
        links = ", ".join(
            f"{link['a_sha256'][:12]}~{link['b_sha256'][:12]} {link['kind']} {link['distance']:g}"
            for link in cluster["links"]
        )
        out.print(f"near-duplicate cluster {number} from {cluster['sources']}: {links}")
    for exact in report["exact"]:
        out.print(
            f"exact duplicate {exact['sha256'][:12]}: {exact['acquisitions']} arrivals"
            f" from {exact['sources']}"
        )
