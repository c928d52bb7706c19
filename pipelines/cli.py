"""The `qarina` command: ingest, run, status, show, verify, demo, benchmarks and evaluations.

The app and what commands share live in `pipelines/commands/base.py`; commands of other
areas register themselves from the modules of `pipelines/commands/`, imported here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from evidence.controls import PauseState, pause_state
from evidence.jobs import OPEN_STATES
from evidence.requests import UnknownRequest
from evidence.status import StatusReport
from evidence.store import Store
from models import whisper
from pipelines.backlog import BacklogProgress, backlog_progress
from pipelines.commands import (
    api,  # noqa: F401 - registers its commands on the app
    backlog,
    export,  # noqa: F401 - registers its commands on the app
    intake,  # noqa: F401 - registers its commands on the app
    review,  # noqa: F401 - registers its commands on the app
    service,  # noqa: F401 - registers its commands on the app
    sizing,  # noqa: F401 - registers its commands on the app
)
from pipelines.commands import (
    report as report_commands,  # noqa: F401 - registers its commands on the app
)
from pipelines.commands.base import (
    LANGUAGE,
    app,
    bench_app,
    config_of,
    console,
    eval_app,
    out,
    with_language,
    write_json,
)
from pipelines.dedup.reports import dupes_report, hash_outside_store, similar_report
from pipelines.plan import Plan
from pipelines.session import open_matcher, open_store, process_queue
from workers.base import Kind, StageError, StageSkipped

__all__ = ["app"]


@app.command()
def run(
    ctx: typer.Context,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster to join (RAY_ADDRESS).")
    ] = None,
    sequential: Annotated[bool, typer.Option(help="Run in this process, without Ray.")] = False,
    language: Annotated[str | None, LANGUAGE] = None,
) -> None:
    """Process the queue until it is empty."""
    config = with_language(config_of(ctx), language)
    if address:
        config = config.with_overrides(ray_address=address)
    store = open_store(config)
    try:
        summary = process_queue(config, store, sequential, console)
        status = store.status(current=Plan.default(settings=config).current_keys())
        paused = pause_state(store.database) if summary.paused else None
    except whisper.ModelMissing as error:
        console.print(f"no speech model: {error}")
        raise typer.Exit(2) from None
    finally:
        store.close()
    out.print(
        f"committed {summary.committed} outcomes ({summary.failed} failures)"
        f" in {summary.wall_s:.1f} s;"
        f" {status.open_jobs} jobs open"
    )
    if paused is not None:
        out.print(
            "the run ended because leasing is paused: "
            + (backlog.pause_line(paused) or "resumed since; `qarina run` goes on"),
            markup=False,
        )
    if status.superseded_items:
        out.print(
            f"items holding only results under older keys: {status.superseded_items}"
            " (`qarina reprocess --stage S` queues them)"
        )


@app.command()
def reprocess(
    ctx: typer.Context,
    stage: Annotated[str, typer.Option("--stage", help="The stage to bring up to its key.")],
    request: Annotated[
        str | None, typer.Option("--request", help="Only items of this request.")
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="Only items of this kind (photo, video, ...).")
    ] = None,
    since: Annotated[
        dt.datetime | None,
        typer.Option(
            "--since",
            help="Only items acquired at or after this date or time (UTC unless an offset"
            " is given).",
            formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"],
        ),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(help="Priority of the new jobs (default: the item's highest arrival)."),
    ] = None,
    reason: Annotated[
        str, typer.Option(help="Why, in the operator's words; kept in each item's custody.")
    ] = "results made under a key the current plan no longer names",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Queue STAGE under its current key for items whose work on it was done under another
    (a new model or version); old results stay, superseded, and what reads STAGE follows."""
    from evidence.reprocess import Request, Selection
    from pipelines.reprocess import reprocess_stage

    config = config_of(ctx)
    plan = Plan.default(settings=config)
    if stage not in plan.stages:
        console.print(f"no stage {stage}; stages: {', '.join(plan.stages)}")
        raise typer.Exit(2)
    if kind is not None and kind not in {k.value for k in Kind}:
        console.print(f"no kind {kind}; kinds: {', '.join(k.value for k in Kind)}")
        raise typer.Exit(2)
    selection = Selection(request, kind, since)
    job_request = Request(
        selection, priority, config.max_attempts, f"qarina-reprocess@{config.operator}", reason
    )
    store = open_store(config)
    try:
        report = reprocess_stage(store, plan, stage, job_request, dry_run)
    finally:
        store.close()
    if as_json:
        write_json(dataclasses.asdict(report) | {"dry_run": dry_run, "stage": stage})
        return
    verb = "would queue" if dry_run else "queued"
    out.print(
        f"{verb} {stage} for {report.queued} items;"
        f" {report.retired} queued jobs under older keys retired"
    )
    for upstream, count in sorted(report.waiting_for_upstream.items()):
        out.print(
            f"{count} items lack a {upstream} result under its current key:"
            f" reprocess --stage {upstream} first"
        )


def _status_table(report: StatusReport) -> Table:
    states = ["queued", "leased", "done", "failed", "dead"]
    title = f"{report.items} items, {report.unreviewed_items} not reviewed"
    table = Table("stage", *states, "superseded items", title=title)
    for stage in report.stages:
        table.add_row(
            stage.stage,
            *(str(stage.counts.get(state, 0)) for state in states),
            str(report.superseded_items.get(stage.stage, 0)),
        )
    return table


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    request: Annotated[
        str | None,
        typer.Option("--request", help="Only this request, with its progress, ETA and deadline."),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Redraw live (counts only) until Ctrl-C.")
    ] = False,
    every: Annotated[float, typer.Option(help="Seconds between redraws with --watch.")] = 2.0,
    refreshes: Annotated[
        int | None, typer.Option(hidden=True, help="Stop --watch after this many draws.")
    ] = None,
) -> None:
    """Counts per stage and state under the current keys, throughput, ETA, superseded items;
    with --request, the request's progress, ETA and whether its deadline holds."""
    config = config_of(ctx)
    if watch and as_json:
        console.print("--watch draws a live view; --json reads once")
        raise typer.Exit(2)
    plan = Plan.default(settings=config)
    store = open_store(config)
    try:
        if watch:
            backlog.watch(
                lambda: _status_view(*_status_read(store, plan, request)), every, refreshes
            )
            return
        report, progress, paused = _status_read(store, plan, request)
    except UnknownRequest:
        console.print(f"no request {request} (`qarina request list` lists them)")
        raise typer.Exit(1) from None
    finally:
        store.close()
    if as_json:
        write_json(
            {
                "items": report.items,
                "stages": {stage.stage: stage.counts for stage in report.stages},
                "open_jobs": report.open_jobs,
                "throughput_per_s": report.throughput_per_s,
                "eta_s": report.eta_s,
                "failures_by_reason": report.failures_by_reason,
                "stage_errors": report.stage_errors,
                "superseded_items": report.superseded_items,
                "other_key_jobs": report.other_key_jobs,
                "unreviewed_items": report.unreviewed_items,
                "paused": paused.paused,
            }
            | ({} if progress is None else {"progress": progress.to_json()})
        )
        return
    out.print(_status_view(report, progress, paused))


def _status_read(
    store: Store, plan: Plan, request: str | None
) -> tuple[StatusReport, BacklogProgress | None, PauseState]:
    """What `status` shows, read at once.

    Raises:
        UnknownRequest: `request` names no request.
    """
    progress = None if request is None else backlog_progress(store, plan, request)
    report = store.status(request, current=plan.current_keys())
    return report, progress, pause_state(store.database)


def _status_view(
    report: StatusReport, progress: BacklogProgress | None, paused: PauseState
) -> Group:
    """The status as people read it: counts only, never names."""
    lines: list[RenderableType] = [_status_table(report)]
    rate = f"{report.throughput_per_s:.1f} jobs/s" if report.throughput_per_s else "idle"
    eta = f", ETA {report.eta_s:.0f} s" if report.eta_s else ""
    lines.append(f"{report.open_jobs} open jobs; {rate} over the last {report.window_s} s{eta}")
    if report.failures_by_reason:
        lines.append(f"failures: {report.failures_by_reason}")
    if report.stage_errors:
        lines.append(
            f"bugs (stage_error, see `qarina show` for fingerprints): {report.stage_errors}"
        )
    if report.superseded_items:
        lines.append(
            "items holding only superseded results (`qarina reprocess --stage S` queues"
            f" them): {report.superseded_items}"
        )
    waiting = {
        stage: {state: count for state, count in counts.items() if state in OPEN_STATES}
        for stage, counts in report.other_key_jobs.items()
    }
    if any(waiting.values()):
        lines.append(
            "open jobs under keys this plan does not name (no driver with these options runs"
            f" them; `qarina reprocess --stage S` replaces them): {waiting}"
        )
    pause_line = backlog.pause_line(paused)
    if pause_line is not None:
        lines.append(Text(pause_line))  # the operator's reason, never read as markup
    if progress is not None:
        lines.append(backlog.progress_view(progress))
    return Group(*lines)


@app.command()
def metrics(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the Prometheus endpoint.")] = 9464,
) -> None:
    """Serve Prometheus metrics (queue depth, jobs/s per stage, failures) until stopped."""
    from pipelines.metrics import serve_metrics

    config = config_of(ctx)
    store = open_store(config)
    server = serve_metrics(store, Plan.default(settings=config).current_keys(), host, port)
    console.print(f"metrics on http://{host}:{port}/metrics (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        store.close()


@app.command()
def show(
    ctx: typer.Context,
    sha256: Annotated[str, typer.Argument(help="The item's SHA-256.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Everything known about one item."""
    config = config_of(ctx)
    store = open_store(config)
    try:
        record = store.show(sha256.lower(), Plan.default(settings=config).current_keys())
    finally:
        store.close()
    if record is None:
        console.print(f"no item {sha256}")
        raise typer.Exit(1)
    if as_json:
        write_json(record)
    else:
        out.print_json(json.dumps(record, ensure_ascii=False))


@app.command()
def dupes(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Rebuild the index from the store first.")
    ] = False,
) -> None:
    """Clusters of near-duplicates (members, sources, distances) and exact duplicates."""
    config = config_of(ctx)
    store = open_store(config)
    try:
        plan = Plan.default(settings=config)
        open_matcher(config, store, plan).update(f"qarina-match@{config.operator}", rebuild=rebuild)
        report = dupes_report(store, plan.keys("hashes"))
    finally:
        store.close()
    if as_json:
        write_json(report)
        return
    for number, cluster in enumerate(report["clusters"], 1):
        table = Table("sha256", "kind", "copies", "sources", title=f"cluster {number}")
        for member in cluster["members"]:
            table.add_row(
                member["sha256"][:16], member["kind"], str(member["acquisitions"]),
                ", ".join(member["sources"]),
            )  # fmt: skip
        out.print(table)
        for link in cluster["links"]:
            out.print(
                f"  {link['a_sha256'][:16]} ~ {link['b_sha256'][:16]}"
                f" {link['kind']} distance {link['distance']:g}"
            )
    out.print(
        f"{len(report['clusters'])} near-duplicate clusters;"
        f" {len(report['exact'])} items acquired more than once"
    )


@app.command()
def similar(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A photo or video that is not in the store.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Stored items that match a file; the file itself is not ingested."""
    config = config_of(ctx)
    if not path.is_file():
        console.print("not a regular file")
        raise typer.Exit(2)
    plan = Plan.default(settings=config)
    try:
        hashed = hash_outside_store(path, plan)
    except (StageError, StageSkipped) as error:
        console.print(f"cannot hash this file: {error}")
        raise typer.Exit(2) from None
    store = open_store(config)
    try:
        matcher = open_matcher(config, store, plan)
        report = similar_report(store, matcher, path, hashed, f"qarina-similar@{config.operator}")
    finally:
        store.close()
    if as_json:
        write_json(report)
        return
    table = Table("sha256", "match", "distance", "query s", "item s", "sources")
    for found in report["matches"]:
        item = found["item"] or {"sources": []}
        table.add_row(
            found["sha256"][:16], found["kind"], f"{found['distance']:g}",
            _seconds(found["query_time_s"]), _seconds(found["item_time_s"]),
            ", ".join(item["sources"]),
        )  # fmt: skip
    out.print(table)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


@app.command()
def search(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="Words to find, with or without diacritics.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    limit: Annotated[int, typer.Option(help="Segments shown at most.")] = 100,
) -> None:
    """Items whose transcripts contain the words, with segment times; doubtful ones marked."""
    from pipelines.search import search_transcripts

    config = config_of(ctx)
    store = open_store(config)
    try:
        hits = search_transcripts(store, Plan.default(settings=config), text, limit)
    finally:
        store.close()
    if as_json:
        write_json(hits)
        return
    table = Table("item", "from", "to", "text", "flags")
    for hit in hits:
        table.add_row(
            hit["sha256"][:16],
            _seconds(hit["start_s"]),
            _seconds(hit["end_s"]),
            hit["text"],
            ", ".join(hit["flags"]),
        )
    out.print(table if hits else "no transcript segment contains these words")


@app.command()
def verify(
    ctx: typer.Context,
    fixity: Annotated[bool, typer.Option("--fixity", help="Re-hash every stored blob.")] = False,
) -> None:
    """Re-walk the custody chain (and re-hash originals); exit 1 naming the first problem."""
    config = config_of(ctx)
    store = open_store(config)
    try:
        report = store.verify(fixity, actor=f"qarina-verify@{config.operator}")
    finally:
        store.close()
    chain = report.chain
    if chain.first_break is not None:
        out.print(
            f"custody chain BROKEN at event {chain.first_break.seq}: {chain.first_break.problem}"
        )
    else:
        out.print(f"custody chain intact: {chain.events} events, head {chain.head_hash}")
    if fixity:
        for problem in report.fixity_problems:
            out.print(f"blob {problem.sha256}: {problem.problem}")
        out.print(
            f"fixity: {report.blobs_checked} blobs checked, {len(report.fixity_problems)} problems"
        )
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def demo(
    ctx: typer.Context,
    sequential: Annotated[bool, typer.Option(help="Run without Ray.")] = False,
) -> None:
    """Generate a small mixed set, ingest it, process it on local Ray, print a summary."""
    from pipelines.demo import run_demo

    run_demo(config_of(ctx), sequential, out)


@eval_app.command("metadata")
def eval_metadata(
    corpus: Annotated[Path, typer.Option(help="The shared corpus folder.")] = Path(
        "../shared/corpus"
    ),
) -> None:
    """Agreement of normalised metadata with the corpus ground truth, per field."""
    from pipelines.metadata_eval import evaluate_metadata

    evaluation = evaluate_metadata(corpus / "images_exif")
    out.print(evaluation.render())


@eval_app.command("transcript")
def eval_transcript(
    ctx: typer.Context,
    corpus: Annotated[Path, typer.Option(help="Folder with transcripts.tsv and the clips.")] = Path(
        "../shared/corpus/audio_ar"
    ),
    tune: Annotated[
        bool,
        typer.Option(
            "--tune",
            help="Try the candidate settings on the choosing half and run with the best there.",
        ),
    ] = False,
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path(
        "bench-results/eval-transcript.json"
    ),
) -> None:
    """WER and CER of the pipeline beside direct faster-whisper, per clip, per half of the
    corpus (the half settings are chosen on, the half held out) and overall."""
    from pipelines.transcript_eval import HALVES, evaluate_transcripts

    evaluation = evaluate_transcripts(corpus, config_of(ctx).models_dir, tune=tune).as_json()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(evaluation, ensure_ascii=False, indent=2), encoding="utf-8")
    table = Table(
        "clip", "half", "pipeline WER", "direct WER", "pipeline CER", "direct CER",
        "direct CER, no VAD",
    )  # fmt: skip
    for clip in evaluation["per_clip"]:
        table.add_row(
            clip["file"] + (" (sampled)" if clip["sampled"] else ""),
            clip["half"],
            f"{clip['pipeline_wer']:.2f}",
            f"{clip['direct_wer']:.2f}",
            f"{clip['pipeline_cer']:.2f}",
            f"{clip['direct_cer']:.2f}",
            f"{clip['direct_no_vad_cer']:.2f}",
        )
    out.print(table)
    if "tuning" in evaluation:
        tried = Table("settings (choosing half)", "clips", "char errors", "CER", "WER")
        for trial in evaluation["tuning"]["tried"]:
            tried.add_row(
                ", ".join(f"{name}={value}" for name, value in trial["settings"].items()),
                str(trial["clips"]),
                str(trial["char_errors"]),
                f"{trial['cer']:.4f}",
                f"{trial['wer']:.4f}",
            )
        out.print(tried)
    out.print(
        f"{evaluation['clips']} clips, model {evaluation['model']['name']}"
        f" ({evaluation['model']['sha256'][:16]}), settings {evaluation['settings']}"
    )
    scopes = [("all clips", evaluation, evaluation["direct_no_vad"]["overall"])]
    scopes += [
        (f"{half} half", evaluation["halves"][half], evaluation["direct_no_vad"][half])
        for half in HALVES
    ]
    for scope, figures, no_vad in scopes:
        for subset in ("overall", "deterministic_clips", "sampled_clips"):
            rates = figures[subset]
            if not rates:
                continue
            overall = subset == "overall"
            out.print(
                f"{scope if overall else '  ' + subset.replace('_', ' ')} ({rates['clips']}):"
                f" pipeline WER {rates['pipeline_wer']:.3f} CER {rates['pipeline_cer']:.3f};"
                f" direct faster-whisper WER {rates['direct_wer']:.3f}"
                f" CER {rates['direct_cer']:.3f}"
                + (f" (without VAD: CER {no_vad['direct_no_vad_cer']:.3f})" if overall else "")
            )


@eval_app.command("dupes")
def eval_dupes(
    corpus: Annotated[Path, typer.Option(help="The shared corpus folder.")] = Path(
        "../shared/corpus"
    ),
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path(
        "bench-results/eval-dupes.json"
    ),
) -> None:
    """Recall and precision of near-duplicate links on the corpus, hard negatives counted;
    recall of copies made of its photos (cropped, captioned, bannered, logo, watermark) per
    kind, per half of the photos (the half settings were chosen on, the half held out) and
    per order of arrival; and links of copies made of its real videos (cuts, frame rates,
    speeds, stills) to their originals, with the offset, speed and time they give."""
    from pipelines.dupes_eval import HALVES, ORDERS, evaluate_dupes
    from pipelines.video_links_eval import evaluate_video_links

    evaluation = evaluate_dupes(corpus).as_json()
    evaluation["videos"] = evaluate_video_links(corpus).as_json()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(evaluation, indent=2) + "\n")
    columns = [(half, order) for half in HALVES for order in ORDERS]
    table = Table("copy", *(f"{half}, {order}" for half, order in columns), *HALVES)
    for kind, halves in evaluation["copies"].items():
        cells = []
        for half, order in columns:
            tally = halves.get(half, {}).get(order)
            cells.append(f"{tally['linked']}/{tally['pairs']}" if tally else "")
        recall = evaluation["copy_recall"][kind]
        table.add_row(kind, *cells, *(f"{recall.get(half, 0.0):.3f}" for half in HALVES))
    out.print(table)
    out.print(
        f"corpus: {evaluation['items']} items, recall {evaluation['recall']}, cluster recall"
        f" {evaluation['cluster_recall']}, precision {evaluation['precision']}; false links"
        f" {evaluation['false_links']} of {evaluation['negatives']} negative pairs"
        f" ({evaluation['hard_negative_links']} of {evaluation['hard_negatives']} hard)"
    )
    out.print(
        f"edited copies: false links {evaluation['edit_false_links']} of"
        f" {evaluation['edit_negatives']} negative pairs ({evaluation['edit_hard_negative_links']}"
        f" of {evaluation['edit_hard_negatives']} hard); results in {output}"
    )
    videos = evaluation["videos"]
    table = Table("video copy", "copies", "linked", "linked, right offset/speed/time")
    for kind, counts in videos["by_kind"].items():
        table.add_row(kind, str(counts["copies"]), str(counts["linked"]), str(counts["right"]))
    out.print(table)
    out.print(
        f"video copies: recall {videos['recall']}, false links {videos['false_links']}"
        f" between different videos' families"
    )


@bench_app.callback(invoke_without_command=True)
def bench_stages(
    ctx: typer.Context,
    sample: Annotated[
        Path | None,
        typer.Option(help="Folder of real material (default: a generated phone-shaped sample)."),
    ] = None,
    stages: Annotated[
        list[str] | None,
        typer.Option("--stages", help="Stages to cost (repeat; default all). All still run."),
    ] = None,
    runs: Annotated[int, typer.Option(help="Runs, each on a fresh store; medians.")] = 1,
    items: Annotated[
        int, typer.Option("--items", help="Items in the generated sample (without --sample).")
    ] = 60,
    peer: Annotated[
        bool, typer.Option(help="Time each stage's peer (pdqhash, PySceneDetect, faster-whisper).")
    ] = True,
    json_out: Annotated[
        Path, typer.Option("--json", help="The bench file (for qarina plan).")
    ] = Path("bench-results/bench.json"),
    html_out: Annotated[Path | None, typer.Option("--html", help="A page with the table.")] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="Ray cluster (HOST:PORT) to run the sample on; default a private local Ray."
            " Figures per core and GPU are then the cluster's; the data folder must be shared.",
        ),
    ] = None,
) -> None:
    """Every stage on a sample shaped like the backlog: cost per item and per media second by
    kind, peak memory, peers, store growth; the bench file `qarina plan` reads. The other
    benchmarks are subcommands."""
    if ctx.invoked_subcommand is not None:
        return
    from pipelines.bench.stages import bench_stages as run_bench

    try:
        bench = run_bench(
            config_of(ctx), sample=sample, stages=stages, runs=runs, items_count=items,
            peer=peer, json_out=json_out, html_out=html_out, progress=console, address=address,
        )  # fmt: skip
    except (FileNotFoundError, ValueError, whisper.ModelMissing) as error:
        console.print(str(error))
        raise typer.Exit(2) from None
    table = Table(
        "stage", "kind", "device", "held", "items", "s/item", "s/media s", "peak RSS MiB",
        "peers s/item", caption="s: reserved device-seconds (worker seconds x units held); "
        "peers: wall seconds",
    )  # fmt: skip
    for cost in bench.costs:
        peers = cost.peers_per_item()
        table.add_row(
            cost.stage, cost.kind, cost.device, f"{cost.reserved:g}", str(cost.items),
            f"{cost.seconds_per_item:.4f}",
            f"{cost.seconds_per_media_s:.4f}",
            "-" if cost.peak_rss_bytes is None else f"{cost.peak_rss_bytes / 2**20:.0f}",
            ", ".join(f"{name} {value:.4f}" for name, value in peers.items()) or "-",
        )  # fmt: skip
    out.print(table)
    console.print(f"bench file written to {json_out}")


@bench_app.command("hashes")
def bench_hashes(
    ctx: typer.Context,
    photos: Annotated[int, typer.Option(help="12 MP photos timed.")] = 12,
    runs: Annotated[int, typer.Option(help="Repetitions per photo; the median is reported.")] = 3,
    corpus: Annotated[Path, typer.Option(help="The shared corpus folder.")] = Path(
        "../shared/corpus"
    ),
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path("bench-results/hashes.json"),
) -> None:
    """PDQ + pHash per 12 MP JPEG against pdqhash + imagehash on a full decode."""
    from pipelines.bench.hashes import bench_hashes as run_bench

    write_json(run_bench(config_of(ctx), output, photos=photos, runs=runs, corpus=corpus))


@bench_app.command("report")
def bench_report(
    ctx: typer.Context,
    runs: Annotated[int, typer.Option(help="Reports written; the median is reported.")] = 3,
    request: Annotated[
        str | None, typer.Option("--request", help="Only this request's items.")
    ] = None,
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path("bench-results/report.json"),
) -> None:
    """The review report of the store (`--data`): time, size, largest page, page render times,
    against dumping every item as `show --json`."""
    from pipelines.bench.review_report import bench_review_report

    write_json(bench_review_report(config_of(ctx), output, runs=runs, request=request))


@bench_app.command("index")
def bench_index(
    ctx: typer.Context,
    hashes: Annotated[int, typer.Option(help="PDQ hashes in the index.")] = 1_000_000,
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path("bench-results/index.json"),
) -> None:
    """Near-duplicate index at scale: query latency, all-pairs clustering, recall, memory."""
    from pipelines.bench.index import bench_index as run_bench

    write_json(run_bench(config_of(ctx), output, hashes=hashes, groups=max(1, hashes // 100)))


@bench_app.command("ingest")
def bench_ingest(
    ctx: typer.Context,
    size_mib: Annotated[int, typer.Option(help="Size of the generated file.")] = 1024,
    runs: Annotated[int, typer.Option(help="Repetitions; the median is reported.")] = 3,
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path("bench-results/ingest.json"),
) -> None:
    """Ingest throughput against `openssl dgst -sha256` on the same file."""
    from pipelines.bench.ingest import bench_ingest as run_bench

    write_json(run_bench(config_of(ctx), size_mib, runs, output))


@bench_app.command("photos")
def bench_photos(
    ctx: typer.Context,
    count: Annotated[int, typer.Option(help="Generated 12 MP JPEGs.")] = 500,
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path("bench-results/photos.json"),
) -> None:
    """End-to-end photo throughput (ingest + probe + metadata), Ray against sequential."""
    from pipelines.bench.photos import bench_photos as run_bench

    write_json(run_bench(config_of(ctx), count, output))


@bench_app.command("tiny")
def bench_tiny(
    ctx: typer.Context,
    count: Annotated[int, typer.Option(help="Generated tiny photos (64x64 to 320x240).")] = 5000,
    runs: Annotated[int, typer.Option(help="Rounds; the median is reported.")] = 3,
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path("bench-results/tiny.json"),
) -> None:
    """Tiny photos through probe, metadata and hashes on Ray, against a plain-loop floor."""
    from pipelines.bench.tiny import bench_tiny as run_bench

    write_json(run_bench(config_of(ctx), count, output, runs=runs))


@bench_app.command("backlog")
def bench_backlog(
    ctx: typer.Context,
    jobs: Annotated[int, typer.Option(help="Jobs to enqueue.")] = 100_000,
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path(
        "bench-results/backlog.json"
    ),
) -> None:
    """Enqueue, lease and status timings for a large backlog."""
    from pipelines.bench.backlog import bench_backlog as run_bench

    write_json(run_bench(config_of(ctx), jobs, output))


@bench_app.command("keyframes")
def bench_keyframes(
    ctx: typer.Context,
    runs: Annotated[int, typer.Option(help="Repetitions; the median is reported.")] = 3,
    seconds: Annotated[float, typer.Option(help="Length of the generated 1080p clip.")] = 60,
    motion: Annotated[
        bool,
        typer.Option(
            help="Also score both detectors on the generated motion set"
            " (fast zooms, whip pans, shake, flashes; fades, dissolves), both halves."
        ),
    ] = True,
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path(
        "bench-results/keyframes.json"
    ),
) -> None:
    """Keyframes stage against PySceneDetect and a full ffmpeg decode, with cut accuracy on
    phone-like clips and, per clip kind and half, on the motion set."""
    from pipelines.bench.keyframes import bench_keyframes as run_bench
    from pipelines.samples.motion_clips import RECIPES

    recipes = RECIPES if motion else ()
    write_json(
        run_bench(config_of(ctx), output, runs=runs, seconds=seconds, motion_recipes=recipes)
    )


@bench_app.command("transcript")
def bench_transcript(
    ctx: typer.Context,
    corpus: Annotated[Path, typer.Option(help="Folder with transcripts.tsv and the clips.")] = Path(
        "../shared/corpus/audio_ar"
    ),
    runs: Annotated[int, typer.Option(help="Rounds; the median is reported.")] = 3,
    minutes: Annotated[float, typer.Option(help="Length of the joined recording.")] = 10.0,
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path(
        "bench-results/transcript.json"
    ),
) -> None:
    """Transcript stage against direct faster-whisper, sequential and batched, and memory."""
    from pipelines.bench.transcript import bench_transcript as run_bench

    write_json(run_bench(config_of(ctx), corpus, output, runs=runs, minutes=minutes))


@bench_app.command("backlog-mix")
def bench_backlog_mix(
    ctx: typer.Context,
    corpus: Annotated[
        Path | None,
        typer.Option(help="Folder ingested as one backlog (default: ../shared/corpus)."),
    ] = None,
    runs: Annotated[int, typer.Option(help="Runs, each on a fresh store; medians.")] = 1,
    peer: Annotated[
        bool,
        typer.Option(
            "--peer",
            help="Also time direct faster-whisper, PySceneDetect and pdqhash on the same items.",
        ),
    ] = False,
    compare: Annotated[
        Path | None,
        typer.Option(
            help="An earlier run's JSON: list items whose outcomes (transcripts aside) differ;"
            " exit 1 when any do."
        ),
    ] = None,
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path(
        "bench-results/backlog-mix.json"
    ),
) -> None:
    """A real mixed folder end to end on local Ray: wall time, items/s, each stage's share."""
    from pipelines.bench.backlog_mix import bench_backlog_mix as run_bench
    from pipelines.bench.backlog_mix import render

    try:
        result = run_bench(
            config_of(ctx),
            output,
            corpus=corpus,
            runs=runs,
            peer=peer,
            compare=compare,
            progress=console,
        )
    except (FileNotFoundError, whisper.ModelMissing) as error:
        console.print(str(error))
        raise typer.Exit(2) from None
    out.print(render(result))
    if result.get("compare", {}).get("differing_items"):
        raise typer.Exit(1)


@bench_app.command("hangs")
def bench_hangs(
    ctx: typer.Context,
    items: Annotated[int, typer.Option(help="Files in the phone-shaped backlog.")] = 30,
    hang_share: Annotated[
        float, typer.Option(help="Share of the backlog made of files that hang ffprobe.")
    ] = 0.1,
    mode: Annotated[
        str, typer.Option(help="spin: the hang keeps a CPU busy; sleep: it waits forever.")
    ] = "spin",
    runs: Annotated[int, typer.Option(help="Pairs of runs (clean, with hangs); medians.")] = 1,
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path("bench-results/hangs.json"),
) -> None:
    """The good files' throughput with files that hang a tool in the backlog, against the
    good files alone in the same run."""
    from pipelines.bench.hangs import bench_hangs as run_bench

    if mode not in ("spin", "sleep"):
        console.print(f"unknown --mode {mode!r}: spin or sleep")
        raise typer.Exit(2)
    _judged(
        lambda: run_bench(
            config_of(ctx),
            output,
            items=items,
            hang_share=hang_share,
            mode="spin" if mode == "spin" else "sleep",
            runs=runs,
            progress=console,
        ),
        "meets_target",
    )


def _judged(bench: Callable[[], dict[str, Any]], verdict: str) -> None:
    """Run a benchmark that needs the Whisper model and judges its own figures: exit 2
    without the model, 1 when `verdict` in its result is false."""
    try:
        result = bench()
    except whisper.ModelMissing as error:
        console.print(str(error))
        raise typer.Exit(2) from None
    if not result[verdict]:
        raise typer.Exit(1)


@bench_app.command("soak")
def bench_soak(
    ctx: typer.Context,
    items: Annotated[int, typer.Option(help="Generated mixed items (messenger shape).")] = 10_000,
    kill_every: Annotated[
        float, typer.Option(help="Seconds between kills of a random Ray worker process.")
    ] = 30.0,
    driver_kills: Annotated[
        int, typer.Option(help="Times the driver is killed (at even steps of progress).")
    ] = 2,
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path("bench-results/soak.json"),
) -> None:
    """A backlog processed through worker and driver kills on a cluster of its own; then
    nothing lost, nothing doubled, custody and fixity verified. Exit 1 otherwise."""
    from pipelines.bench.soak import bench_soak as run_soak

    _judged(
        lambda: run_soak(
            config_of(ctx),
            output,
            items=items,
            kill_every_s=kill_every,
            driver_kills=driver_kills,
            progress=console,
        ),
        "passed",
    )


@bench_app.command("cluster")
def bench_cluster(
    ctx: typer.Context,
    photos: Annotated[int, typer.Option(help="Generated photos in the backlog.")] = 300,
    runs: Annotated[int, typer.Option(help="Rounds; the median is reported.")] = 3,
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path(
        "bench-results/cluster.json"
    ),
) -> None:
    """A photo backlog on one worker node and on two (same CPUs), PostgreSQL store."""
    from pipelines.bench.cluster import bench_cluster as run_bench

    write_json(run_bench(config_of(ctx), output, photos=photos, runs=runs))
