"""Planning arithmetic: from bench files and a backlog's shape to cores, GPUs, days and growth.

Everything here is a pure function of its arguments (the clock is passed in), so the plan's
numbers can be checked against hand-computed cases. The costs come from `costs`, the one cost
model `qarina bench` writes, so the plan and the measurement cannot drift apart.

Work is counted in device-seconds: CPU core-seconds and GPU-seconds. A stage's work on a
backlog is the sum over kinds of `items * share * (seconds_per_item + seconds_per_media_s *
media_s)`; dividing a device class's work by the seconds one unit has before the deadline
gives the units needed, and dividing it by the units a cluster has gives the time to clear.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.sizing.costs import DEVICES, KINDS, BenchFile, Device, Growth, StageCost

#: The share of a unit's time that goes to useful stage work. Measured costs are of a stage
#: running flat out on a warm worker; a cluster also loses time to scheduling gaps between
#: jobs, retries of failed jobs, worker start-up (model loading) and uneven queues at the end
#: of a backlog. 0.9 was chosen on one end-to-end check (`qarina plan-check`, a 60-item
#: sample planning a 150-item backlog on 2 cores: 92% of the reserved core time went to stage
#: work) and is checked on another (200 planning 1,000), so it is not fitted to the run it is
#: judged on. A cluster whose store sits across a network may do worse: `--efficiency`.
EFFICIENCY = 0.9
SECONDS_PER_DAY = 86_400
#: Shares of a mix may be typed with two decimals (0.33/0.33/0.34); tolerate rounding.
MIX_TOLERANCE = 1e-6
#: Work that is a whole number of units up to floating-point noise must not round up a unit.
_CEIL_SLACK = 1e-9
#: The node chart never draws more points than this, however large the cluster.
MAX_CHART_NODES = 200


class PlanError(ValueError):
    """A plan that cannot be made from what was given; the message says what to change."""


@dataclass(frozen=True)
class Backlog:
    """The items to clear: how many, the share of each kind, and the average media lengths.

    Average lengths are enough because every cost is linear in media seconds: the work of a
    backlog is the work of its average item times the count.
    """

    items: int
    mix: Mapping[str, float]
    video_minutes: float = 0.0
    audio_minutes: float = 0.0

    def __post_init__(self) -> None:
        if self.items <= 0:
            raise PlanError(f"the backlog must hold at least one item, got {self.items}")
        unknown = sorted(set(self.mix) - set(KINDS))
        if unknown:
            raise PlanError(f"unknown kind(s) in the mix: {', '.join(unknown)}; use {KINDS}")
        if any(share < 0 for share in self.mix.values()):
            raise PlanError("a share of the mix is negative")
        total = sum(self.mix.values())
        if abs(total - 1.0) > MIX_TOLERANCE:
            raise PlanError(f"the mix's shares must sum to 1, they sum to {total:g}")
        if self.video_minutes < 0 or self.audio_minutes < 0:
            raise PlanError("media minutes cannot be negative")

    def count(self, kind: str) -> float:
        """Items of `kind` (fractional: a share of a count is an expectation, not a tally)."""
        return self.items * self.mix.get(kind, 0.0)

    def media_s(self, kind: str) -> float:
        """Average media seconds of an item of `kind`; photos have none."""
        return {"video": self.video_minutes * 60.0, "audio": self.audio_minutes * 60.0}.get(
            kind, 0.0
        )

    def kinds(self) -> list[str]:
        """The kinds the backlog actually holds, in `KINDS` order."""
        return [kind for kind in KINDS if self.mix.get(kind, 0.0) > 0]


@dataclass(frozen=True)
class Units:
    """Device units: CPU cores and GPUs, of a cluster, a node, or what a deadline needs."""

    cpu: int
    gpu: int

    def of(self, device: str) -> int:
        return self.cpu if device == "cpu" else self.gpu


def parse_mix(text: str) -> dict[str, float]:
    """`photo=0.7,video=0.2,audio=0.1` into shares; `Backlog` checks they sum to 1."""
    return {key: float(value) for key, value in _pairs(text, "--mix")}


def parse_units(text: str) -> Units:
    """`cpu=64,gpu=2` into units; a class left out has none."""
    values = dict(_pairs(text, "--cluster"))
    unknown = sorted(set(values) - set(DEVICES))
    if unknown:
        raise PlanError(f"unknown device class(es): {', '.join(unknown)}; use cpu and gpu")
    try:
        units = Units(cpu=int(values.get("cpu", "0")), gpu=int(values.get("gpu", "0")))
    except ValueError as error:
        raise PlanError(f"device counts are whole numbers: {text!r}") from error
    if units.cpu < 0 or units.gpu < 0:
        raise PlanError(f"device counts cannot be negative: {text!r}")
    return units


def _pairs(text: str, option: str) -> list[tuple[str, str]]:
    pairs = []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise PlanError(f"{option} takes name=value pairs separated by commas, got {text!r}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def required_stages() -> dict[str, tuple[str, ...]]:
    """For each kind, the registered stages that process it: each needs a cost to be planned.

    Read from the workers' registry, so a new stage is required of bench files as soon as it
    is registered, and a plan cannot silently leave a stage's work out.
    """
    from workers import STAGES  # the registry; imported here to keep this module's import light

    return {
        kind: tuple(stage.name for stage, _ in STAGES if kind in {str(k) for k in stage.kinds})
        for kind in KINDS
    }


def select_costs(
    benches: Sequence[BenchFile], use_gpu: bool
) -> tuple[dict[tuple[str, str], StageCost], list[str]]:
    """The one cost used for each (stage, kind), and notes saying which choices were made.

    GPU costs come from bench files of machines with GPUs. CPU costs come from GPU-less
    machines' files when any was given (a GPU node's CPU is not what CPU nodes will have), else
    from the GPU node's file. Two files of the same class costing the same stage, kind and
    device are refused: averaging two machines would describe neither. Where a (stage, kind)
    has both a CPU and a GPU cost, the GPU one is used when the cluster has GPUs.
    """
    cpu_only = [bench for bench in benches if bench.gpus == 0]
    with_gpu = [bench for bench in benches if bench.gpus > 0]
    sources: dict[Device, list[BenchFile]] = {
        "cpu": cpu_only or with_gpu,
        "gpu": with_gpu,
    }
    found: dict[tuple[str, str, Device], StageCost] = {}
    for device in ("cpu", "gpu"):
        for bench in sources[device]:
            for cost in bench.costs:
                if cost.device != device:
                    continue
                key = (cost.stage, cost.kind, cost.device)
                if key in found:
                    raise PlanError(
                        f"two bench files give a {device.upper()} cost for stage {cost.stage} "
                        f"on {cost.kind} items; pass one bench file per node class"
                    )
                found[key] = cost
    chosen: dict[tuple[str, str], StageCost] = {}
    notes: list[str] = []
    both: set[str] = set()
    for (stage, kind, device), cost in found.items():
        other: Device = "gpu" if device == "cpu" else "cpu"
        has_other = (stage, kind, other) in found
        if has_other:
            both.add(stage)
            if (device == "gpu") == use_gpu:
                chosen[(stage, kind)] = cost
        elif device == "cpu" or use_gpu:
            chosen[(stage, kind)] = cost
    for stage in sorted(both):
        where = "GPU (the cluster has GPUs)" if use_gpu else "CPU (the cluster has no GPUs)"
        notes.append(f"{stage} has CPU and GPU costs; the plan runs it on {where}")
    return chosen, notes


@dataclass(frozen=True)
class StageWork:
    """One stage's work on the backlog, on the device class that runs it, in device-seconds."""

    stage: str
    device: Device
    seconds: float
    by_kind: dict[str, float]


def stage_work(
    backlog: Backlog,
    costs: Mapping[tuple[str, str], StageCost],
    required: Mapping[str, Sequence[str]],
) -> list[StageWork]:
    """Each stage's work: the sum over the mix's kinds of count x (per item + per second x media).

    Refuses a kind in the mix that lacks a cost for a stage that processes it: leaving that
    stage out would plan too few machines without saying so. Costs present for stages outside
    the registry (e.g. intake hashing) are charged as well.
    """
    kinds = backlog.kinds()
    for kind in kinds:
        missing = [stage for stage in required.get(kind, ()) if (stage, kind) not in costs]
        if missing:
            raise PlanError(
                f"no cost for stage(s) {', '.join(missing)} on {kind} items in the bench files; "
                f"bench a sample holding {kind} items with those stages, or drop {kind} "
                "from the mix"
            )
    grouped: dict[tuple[str, Device], dict[str, float]] = {}
    for (stage, kind), cost in costs.items():
        if kind not in kinds:
            continue
        seconds = backlog.count(kind) * cost.seconds_for(backlog.media_s(kind))
        grouped.setdefault((stage, cost.device), {})[kind] = seconds
    return sorted(
        (
            StageWork(stage, device, sum(by_kind.values()), by_kind)
            for (stage, device), by_kind in grouped.items()
        ),
        key=lambda work: (work.device, -work.seconds, work.stage),
    )


def device_seconds(works: Iterable[StageWork]) -> dict[str, float]:
    """Total work per device class, both classes always present."""
    totals = dict.fromkeys(DEVICES, 0.0)
    for work in works:
        totals[work.device] += work.seconds
    return totals


def available_seconds(deadline: dt.date, now: dt.datetime) -> float:
    """Seconds from `now` to the start (00:00 UTC) of the deadline's day.

    The start, not the end: "by 1 March" means done when 1 March begins.
    """
    if now.tzinfo is None:
        raise PlanError("`now` must carry a time zone")
    end = dt.datetime.combine(deadline, dt.time(), tzinfo=dt.UTC)
    seconds = (end - now).total_seconds()
    if seconds <= 0:
        raise PlanError(f"the deadline {deadline.isoformat()} has passed")
    return seconds


def units_needed(work_s: float, available_s: float, efficiency: float = EFFICIENCY) -> int:
    """Units (cores or GPUs) that do `work_s` device-seconds in `available_s` at `efficiency`.

    Rounded up: a fraction of a core still has to be bought as a core.
    """
    if work_s <= 0:
        return 0
    return math.ceil(work_s / (available_s * efficiency) - _CEIL_SLACK)


def days_by_device(
    seconds: Mapping[str, float], units: Units, efficiency: float = EFFICIENCY
) -> dict[str, float]:
    """Days each device class needs to do its work on `units`; refuses work with no units."""
    days: dict[str, float] = {}
    for device in DEVICES:
        work = seconds.get(device, 0.0)
        if work <= 0:
            continue
        count = units.of(device)
        if count <= 0:
            raise PlanError(
                f"the backlog needs {work / 3600:,.1f} {device.upper()} hours "
                f"but the cluster has no {device.upper()}s"
            )
        days[device] = work / (count * efficiency) / SECONDS_PER_DAY
    return days


def days_to_clear(
    seconds: Mapping[str, float], units: Units, efficiency: float = EFFICIENCY
) -> float:
    """Days to clear: the slower device class sets the pace, as stages of both run at once."""
    return max(days_by_device(seconds, units, efficiency).values(), default=0.0)


def bottleneck(
    works: Sequence[StageWork], seconds: Mapping[str, float], units: Units, efficiency: float
) -> tuple[str, str] | None:
    """The limiting device class and the stage with the largest share of its work.

    Adding units of the other class would not clear the backlog sooner; making that stage
    cheaper, or adding units of this class, would.
    """
    days = days_by_device(seconds, units, efficiency)
    if not days:
        return None
    device = max(days, key=lambda name: days[name])
    stage = max((work for work in works if work.device == device), key=lambda w: w.seconds)
    return device, stage.stage


@dataclass(frozen=True)
class StoreGrowth:
    """What clearing the backlog adds to the store."""

    blob_bytes: float
    artifact_bytes: float
    db_rows: float
    by_kind: dict[str, dict[str, float]]


def store_growth(backlog: Backlog, growths: Sequence[Growth]) -> StoreGrowth:
    """Blobs, artifacts and rows: count x (per item + per second x media) for each kind.

    The first bench file measuring a kind gives its growth: growth depends on the material,
    not the machine, so any file's figure serves.
    """
    per_kind: dict[str, Growth] = {}
    for growth in growths:
        per_kind.setdefault(growth.kind, growth)
    by_kind: dict[str, dict[str, float]] = {}
    for kind in backlog.kinds():
        if kind not in per_kind:
            raise PlanError(f"no store growth for {kind} items in the bench files")
        growth = per_kind[kind]
        count, media = backlog.count(kind), backlog.media_s(kind)
        by_kind[kind] = {
            "blob_bytes": count * (growth.blob_bytes + growth.blob_bytes_per_media_s * media),
            "artifact_bytes": count
            * (growth.artifact_bytes + growth.artifact_bytes_per_media_s * media),
            "db_rows": count * (growth.db_rows + growth.db_rows_per_media_s * media),
        }
    return StoreGrowth(
        blob_bytes=sum(row["blob_bytes"] for row in by_kind.values()),
        artifact_bytes=sum(row["artifact_bytes"] for row in by_kind.values()),
        db_rows=sum(row["db_rows"] for row in by_kind.values()),
        by_kind=by_kind,
    )


def node_shape(benches: Sequence[BenchFile], use_gpu: bool) -> Units:
    """The node the chart counts in: the GPU node's machine when GPUs are used, else a CPU one.

    With a CPU node's and a GPU node's bench, a cluster built of GPU nodes runs the CPU stages
    on their cores too, so the GPU node's shape is the one to multiply.
    """
    with_gpu = [bench for bench in benches if bench.gpus > 0]
    bench = with_gpu[0] if use_gpu and with_gpu else benches[0]
    return Units(cpu=bench.cores, gpu=bench.gpus if use_gpu else 0)


def nodes_curve(
    seconds: Mapping[str, float], shape: Units, nodes: int, efficiency: float = EFFICIENCY
) -> list[tuple[int, float]]:
    """Days to clear on 1..`nodes` nodes of `shape`."""
    return [
        (count, days_to_clear(seconds, Units(shape.cpu * count, shape.gpu * count), efficiency))
        for count in range(1, nodes + 1)
    ]


@dataclass(frozen=True)
class Plan:
    """A plan's figures: the work per stage, what a deadline needs, what a cluster takes."""

    backlog: Backlog
    efficiency: float
    use_gpu: bool
    works: list[StageWork]
    seconds: dict[str, float]
    growth: StoreGrowth
    shape: Units
    curve: list[tuple[int, float]]
    bottleneck: tuple[str, str] | None
    deadline: dt.date | None = None
    available_s: float | None = None
    needed: Units | None = None
    nodes_needed: int | None = None
    cluster: Units | None = None
    days: float | None = None
    notes: list[str] = field(default_factory=list)


def make_plan(
    backlog: Backlog,
    benches: Sequence[BenchFile],
    *,
    deadline: dt.date | None = None,
    now: dt.datetime | None = None,
    cluster: Units | None = None,
    efficiency: float = EFFICIENCY,
    required: Mapping[str, Sequence[str]] | None = None,
) -> Plan:
    """The whole plan: needs with a deadline, days with a cluster, both when both are given.

    GPUs are used when the cluster has some, or, without a cluster, when a bench file comes
    from a machine with GPUs.
    """
    if not benches:
        raise PlanError("a plan needs at least one bench file")
    if not 0 < efficiency <= 1:
        raise PlanError(f"efficiency must be in (0, 1], got {efficiency}")
    use_gpu = cluster.gpu > 0 if cluster is not None else any(b.gpus > 0 for b in benches)
    costs, notes = select_costs(benches, use_gpu)
    gpu_only = sorted(
        {
            f"{cost.stage} ({cost.kind})"
            for bench in benches
            for cost in bench.costs
            if cost.kind in backlog.kinds() and (cost.stage, cost.kind) not in costs
        }
    )
    if gpu_only:
        raise PlanError(
            f"only GPU costs for {', '.join(gpu_only)}, and the cluster has no GPUs: "
            "give GPUs in --cluster, or a bench file that measured those stages on CPU"
        )
    works = stage_work(backlog, costs, required_stages() if required is None else required)
    seconds = device_seconds(works)
    shape = node_shape(benches, use_gpu)
    needed = nodes_needed = available = None
    if deadline is not None:
        available = available_seconds(deadline, now or dt.datetime.now(dt.UTC))
        needed = Units(
            cpu=units_needed(seconds["cpu"], available, efficiency),
            gpu=units_needed(seconds["gpu"], available, efficiency),
        )
        nodes_needed = _nodes_for(needed, shape)
    days = days_to_clear(seconds, cluster, efficiency) if cluster is not None else None
    limit = cluster if cluster is not None else shape
    chart_nodes = _chart_nodes(nodes_needed, cluster, shape)
    try:
        curve = nodes_curve(seconds, shape, chart_nodes, efficiency)
        limiting = bottleneck(works, seconds, limit, efficiency)
    except PlanError:  # the node shape lacks a device class the work needs: no chart
        curve, limiting = [], None
    return Plan(
        backlog=backlog,
        efficiency=efficiency,
        use_gpu=use_gpu,
        works=works,
        seconds=seconds,
        growth=store_growth(backlog, [g for bench in benches for g in bench.growth]),
        shape=shape,
        curve=curve,
        bottleneck=limiting,
        deadline=deadline,
        available_s=available,
        needed=needed,
        nodes_needed=nodes_needed,
        cluster=cluster,
        days=days,
        notes=notes,
    )


def _nodes_for(units: Units, shape: Units) -> int | None:
    """Nodes of `shape` that hold `units`; None when the shape lacks a class the units need."""
    counts = []
    for device in DEVICES:
        if units.of(device) == 0:
            continue
        if shape.of(device) == 0:
            return None
        counts.append(math.ceil(units.of(device) / shape.of(device)))
    return max(counts, default=0)


def _chart_nodes(nodes_needed: int | None, cluster: Units | None, shape: Units) -> int:
    """Enough nodes to show the knee: twice what the deadline or the cluster asks, at least 8."""
    wanted = 8
    if nodes_needed:
        wanted = max(wanted, 2 * nodes_needed)
    if cluster is not None:
        for device in DEVICES:
            if shape.of(device):
                wanted = max(wanted, 2 * math.ceil(cluster.of(device) / shape.of(device)))
    return min(wanted, MAX_CHART_NODES)


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan as JSON: every figure the table and the page show, in device-seconds and days."""
    return {
        "backlog": {
            "items": plan.backlog.items,
            "mix": dict(plan.backlog.mix),
            "video_minutes": plan.backlog.video_minutes,
            "audio_minutes": plan.backlog.audio_minutes,
        },
        "efficiency": plan.efficiency,
        "use_gpu": plan.use_gpu,
        "stages": [
            {
                "stage": work.stage,
                "device": work.device,
                "seconds": work.seconds,
                "share": _share(work, plan.seconds),
                "by_kind": work.by_kind,
            }
            for work in plan.works
        ],
        "device_seconds": plan.seconds,
        "deadline": plan.deadline.isoformat() if plan.deadline else None,
        "available_s": plan.available_s,
        "needed": _units_json(plan.needed),
        "nodes_needed": plan.nodes_needed,
        "cluster": _units_json(plan.cluster),
        "days": plan.days,
        "bottleneck": (
            {"device": plan.bottleneck[0], "stage": plan.bottleneck[1]} if plan.bottleneck else None
        ),
        "node_shape": _units_json(plan.shape),
        "curve": [{"nodes": nodes, "days": days} for nodes, days in plan.curve],
        "growth": {
            "blob_bytes": plan.growth.blob_bytes,
            "artifact_bytes": plan.growth.artifact_bytes,
            "db_rows": plan.growth.db_rows,
            "by_kind": plan.growth.by_kind,
        },
        "notes": plan.notes,
    }


def _units_json(units: Units | None) -> dict[str, int] | None:
    return None if units is None else {"cpu": units.cpu, "gpu": units.gpu}


def _share(work: StageWork, seconds: Mapping[str, float]) -> float:
    """A stage's share of its device class's work."""
    total = seconds.get(work.device, 0.0)
    return work.seconds / total if total else 0.0


def summary_lines(plan: Plan) -> list[str]:
    """The plan's conclusions in sentences, shared by the terminal and the page."""
    lines = []
    if plan.needed is not None and plan.deadline is not None and plan.available_s is not None:
        lines.append(
            f"By {plan.deadline.isoformat()} ({plan.available_s / SECONDS_PER_DAY:,.1f} days): "
            f"{plan.needed.cpu} CPU cores and {plan.needed.gpu} GPUs "
            f"at {plan.efficiency:.0%} efficiency"
            + (
                f", {plan.nodes_needed} node(s) of {_shape_text(plan.shape)}"
                if plan.nodes_needed is not None
                else ""
            )
            + "."
        )
    if plan.cluster is not None and plan.days is not None:
        lines.append(
            f"On {plan.cluster.cpu} CPU cores and {plan.cluster.gpu} GPUs: "
            f"{plan.days:,.2f} days to clear at {plan.efficiency:.0%} efficiency."
        )
        if plan.deadline is not None and plan.available_s is not None:
            meets = plan.days * SECONDS_PER_DAY <= plan.available_s
            lines.append("That meets the deadline." if meets else "That misses the deadline.")
    if plan.bottleneck is not None:
        device, stage = plan.bottleneck
        lines.append(f"Bottleneck: {device.upper()}, mostly stage {stage}.")
    growth = plan.growth
    lines.append(
        f"Store growth: {_bytes(growth.blob_bytes)} of blobs, {_bytes(growth.artifact_bytes)} "
        f"of artifacts, {growth.db_rows:,.0f} database rows."
    )
    return lines + plan.notes


def _shape_text(shape: Units) -> str:
    return f"{shape.cpu} cores" + (f" + {shape.gpu} GPU(s)" if shape.gpu else "")


def _bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:,.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


#: The chart's size and the room left for the axes' numbers and titles.
CHART_WIDTH, CHART_HEIGHT = 640, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 16, 16, 44


def chart_svg(plan: Plan) -> str:
    """Days to clear against nodes of the bench's shape, with the deadline as a dashed line.

    Inline SVG with no script or external resource, so the page renders from disk.
    """
    if not plan.curve:
        return "<p>No chart: the node shape lacks a device class the work needs.</p>"
    deadline_days = plan.available_s / SECONDS_PER_DAY if plan.available_s else None
    top = max([days for _, days in plan.curve] + ([deadline_days] if deadline_days else []))
    top = top or 1.0
    last = plan.curve[-1][0]
    width, height = CHART_WIDTH - _LEFT - _RIGHT, CHART_HEIGHT - _TOP - _BOTTOM

    def x(nodes: float) -> float:
        return _LEFT + (nodes - 1) / max(last - 1, 1) * width

    def y(days: float) -> float:
        return _TOP + height - days / top * height

    points = " ".join(f"{x(n):.1f},{y(d):.1f}" for n, d in plan.curve)
    parts = [
        f'<svg width="{CHART_WIDTH}" height="{CHART_HEIGHT}" '
        f'role="img" aria-label="Days to clear against nodes">',
        f'<line x1="{_LEFT}" y1="{_TOP + height}" x2="{_LEFT + width}" y2="{_TOP + height}" '
        'stroke="#444"/>',
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + height}" stroke="#444"/>',
    ]
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        days = top * fraction
        parts.append(
            f'<text x="{_LEFT - 6}" y="{y(days) + 4:.1f}" text-anchor="end" '
            f'font-size="11">{days:,.1f}</text>'
        )
    step = max(1, math.ceil(last / 10))
    for nodes in range(1, last + 1, step):
        parts.append(
            f'<text x="{x(nodes):.1f}" y="{_TOP + height + 16}" text-anchor="middle" '
            f'font-size="11">{nodes}</text>'
        )
    parts.append(
        f'<text x="{_LEFT + width / 2:.1f}" y="{CHART_HEIGHT - 6}" text-anchor="middle" '
        f'font-size="12">nodes of {html.escape(_shape_text(plan.shape))}</text>'
    )
    parts.append(
        f'<text x="14" y="{_TOP + height / 2:.1f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {_TOP + height / 2:.1f})">days to clear</text>'
    )
    parts.append(f'<polyline points="{points}" fill="none" stroke="#1f5fa8" stroke-width="2"/>')
    if deadline_days:
        parts.append(
            f'<line class="deadline" x1="{_LEFT}" y1="{y(deadline_days):.1f}" '
            f'x2="{_LEFT + width}" y2="{y(deadline_days):.1f}" stroke="#b22" '
            'stroke-dasharray="6 4"/>'
        )
        parts.append(
            f'<text x="{_LEFT + width - 4}" y="{y(deadline_days) - 5:.1f}" text-anchor="end" '
            f'font-size="11" fill="#b22">deadline ({deadline_days:,.1f} days)</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def plan_html(plan: Plan) -> str:
    """A self-contained page: the conclusions, the chart, the per-stage work, the growth."""
    rows = "\n".join(
        f"<tr><td>{html.escape(work.stage)}</td><td>{work.device.upper()}</td>"
        f"<td>{work.seconds / 3600:,.2f}</td><td>{_share(work, plan.seconds):.1%}</td></tr>"
        for work in plan.works
    )
    growth_rows = "\n".join(
        f"<tr><td>{html.escape(kind)}</td><td>{_bytes(row['blob_bytes'])}</td>"
        f"<td>{_bytes(row['artifact_bytes'])}</td><td>{row['db_rows']:,.0f}</td></tr>"
        for kind, row in plan.growth.by_kind.items()
    )
    mix = ", ".join(f"{html.escape(k)} {v:.0%}" for k, v in plan.backlog.mix.items())
    summary = "\n".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(plan))
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Qarina sizing plan</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 60em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
</style>
</head>
<body>
<h1>Sizing plan</h1>
<p>{plan.backlog.items:,} items ({mix}); videos {plan.backlog.video_minutes:g} min,
recordings {plan.backlog.audio_minutes:g} min on average.</p>
<ul>
{summary}
</ul>
<h2>Days to clear against nodes</h2>
{chart_svg(plan)}
<h2>Work per stage</h2>
<table>
<tr><th>stage</th><th>device</th><th>device-hours</th><th>share of device</th></tr>
{rows}
</table>
<h2>Store growth</h2>
<table>
<tr><th>kind</th><th>blobs</th><th>artifacts</th><th>DB rows</th></tr>
{growth_rows}
</table>
</body>
</html>
"""
