"""The sizing plan's arithmetic against hand-computed cases, and `qarina plan` end to end.

Every expected number below is worked out by hand in the comment beside it, so a change to
the arithmetic shows up as a disagreement with a sum a reader can redo on paper.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.sizing.costs import (
    FORMAT_VERSION,
    BenchFile,
    BenchFileError,
    Growth,
    StageCost,
    load_bench,
    write_bench,
)
from pipelines.sizing.plan import (
    EFFICIENCY,
    Backlog,
    Plan,
    PlanError,
    Units,
    available_seconds,
    make_plan,
    parse_mix,
    parse_units,
    plan_html,
    plan_json,
    required_stages,
    store_growth,
    units_needed,
)

#: The stages the hand-computed cases charge: probe for every kind, transcript for media.
REQUIRED = {"photo": ("probe",), "video": ("probe", "transcript"), "audio": ("probe", "transcript")}
#: The hand-computed cases' margin, fixed here so that they do not move with the default.
MARGIN = 0.8
NOW = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
#: Ten days after NOW: 864,000 s, of which a unit gives 0.8 x 864,000 = 691,200 s of work.
DEADLINE = dt.date(2027, 1, 11)


def cost(stage: str, kind: str, device: str, per_item: float, per_s: float = 0.0) -> StageCost:
    return StageCost(stage, kind, device, per_item, per_s, None, 10)  # type: ignore[arg-type]


GROWTH = [
    Growth("photo", blob_bytes=3e6, artifact_bytes=0, db_rows=5),
    Growth("video", 0, 50_000, 10, blob_bytes_per_media_s=1e6, db_rows_per_media_s=0.1),
    Growth("audio", blob_bytes=2e5, artifact_bytes=1000, db_rows=4),
]


def cpu_bench(extra: list[StageCost] | None = None) -> BenchFile:
    """A 64-core CPU node: probe on every kind, and transcript on CPU."""
    costs = [
        cost("probe", "photo", "cpu", 0.1),  # 0.1 per photo
        cost("probe", "video", "cpu", 0.2, 0.01),  # 0.2 + 0.01 x 120 = 1.4 per video
        cost("probe", "audio", "cpu", 0.1, 0.005),  # 0.1 + 0.005 x 60 = 0.4 per recording
        cost("transcript", "video", "cpu", 1.0, 0.5),  # 1 + 0.5 x 120 = 61
        cost("transcript", "audio", "cpu", 1.0, 0.5),  # 1 + 0.5 x 60 = 31
    ]
    machine = {"cpu_model": "test", "cores": 64, "gpus": []}
    return BenchFile(machine, {"qarina": "test"}, {}, costs + (extra or []), GROWTH)


def gpu_bench() -> BenchFile:
    """A 16-core node with two GPUs: transcript on GPU (its CPU rows would be the GPU node's)."""
    costs = [
        cost("probe", "photo", "cpu", 99.0),  # ignored: a CPU node's bench is given too
        cost("transcript", "video", "gpu", 0.5, 0.05),  # 0.5 + 0.05 x 120 = 6.5
        cost("transcript", "audio", "gpu", 0.5, 0.05),  # 0.5 + 0.05 x 60 = 3.5
    ]
    gpus = [{"name": "H100", "memory_bytes": 80 * 2**30}] * 2
    return BenchFile({"cores": 16, "gpus": gpus}, {}, {}, costs, [])


def backlog(items: int = 2_000_000) -> Backlog:
    return Backlog(items, {"photo": 0.5, "video": 0.3, "audio": 0.2}, 2, 1)


# Per 1,000 items (500 photos, 300 videos of 120 s, 200 recordings of 60 s):
#   probe      CPU: 500 x 0.1 + 300 x 1.4 + 200 x 0.4 = 50 + 420 + 80 = 550 s
#   transcript CPU: 300 x 61 + 200 x 31 = 18,300 + 6,200 = 24,500 s
#   transcript GPU: 300 x 6.5 + 200 x 3.5 = 1,950 + 700 = 2,650 s
# For 2,000,000 items multiply by 2,000.


def _cpu_and_gpu_nodes_by_deadline() -> Plan:
    return make_plan(
        backlog(),
        [cpu_bench(), gpu_bench()],
        deadline=DEADLINE,
        now=NOW,
        required=REQUIRED,
        efficiency=MARGIN,
    )


def test_deadline_with_cpu_and_gpu_nodes_gives_cores_and_gpus() -> None:
    plan = _cpu_and_gpu_nodes_by_deadline()
    assert plan.use_gpu
    assert plan.seconds == pytest.approx({"cpu": 1_100_000, "gpu": 5_300_000})
    # cores: 1,100,000 / 691,200 = 1.59 -> 2; GPUs: 5,300,000 / 691,200 = 7.67 -> 8
    assert plan.needed == Units(cpu=2, gpu=8)
    # nodes of the GPU node's shape (16 cores, 2 GPUs): max(ceil(2/16), ceil(8/2)) = 4
    assert plan.shape == Units(16, 2)
    assert plan.nodes_needed == 4
    assert plan.bottleneck == ("gpu", "transcript")
    assert any("transcript" in note and "GPU" in note for note in plan.notes)


def test_deadline_on_cpu_only_runs_transcript_on_cores() -> None:
    plan = make_plan(
        backlog(), [cpu_bench()], deadline=DEADLINE, now=NOW, required=REQUIRED, efficiency=MARGIN
    )
    assert not plan.use_gpu
    # (550 + 24,500) x 2,000 = 50,100,000 core-s; / 691,200 = 72.48 -> 73 cores
    assert plan.needed == Units(cpu=73, gpu=0)
    assert plan.nodes_needed == 2  # 73 cores on 64-core nodes
    assert plan.bottleneck == ("cpu", "transcript")


def test_cluster_gives_days_to_clear_and_the_limiting_device() -> None:
    both = [cpu_bench(), gpu_bench()]
    plan = make_plan(backlog(), both, cluster=Units(64, 2), required=REQUIRED, efficiency=MARGIN)
    # GPU: 5,300,000 / (2 x 0.8) / 86,400 = 38.339 days; CPU: 1,100,000 / 51.2 / 86,400 = 0.249
    assert plan.days == pytest.approx(5_300_000 / 1.6 / 86_400)
    assert plan.days == pytest.approx(38.339, abs=1e-3)
    assert plan.bottleneck == ("gpu", "transcript")
    assert plan.needed is None

    # One core and eight GPUs: CPU 1,100,000 / 0.8 / 86,400 = 15.91 days beats GPU 9.59 days,
    # and probe is the only stage left on the CPU.
    starved = make_plan(backlog(), both, cluster=Units(1, 8), required=REQUIRED, efficiency=MARGIN)
    assert starved.days == pytest.approx(1_100_000 / 0.8 / 86_400)
    assert starved.bottleneck == ("cpu", "probe")

    # No GPUs in the cluster: transcript goes back to its CPU cost, 50,100,000 / 51.2 / 86,400.
    cpu_only = make_plan(
        backlog(), both, cluster=Units(64, 0), required=REQUIRED, efficiency=MARGIN
    )
    assert not cpu_only.use_gpu
    assert cpu_only.days == pytest.approx(11.3254, abs=1e-4)
    assert cpu_only.bottleneck == ("cpu", "transcript")


def test_deadline_and_cluster_together_say_whether_it_is_met() -> None:
    plan = make_plan(
        backlog(),
        [cpu_bench(), gpu_bench()],
        deadline=DEADLINE,
        now=NOW,
        cluster=Units(64, 2),
        required=REQUIRED,
        efficiency=MARGIN,
    )
    assert plan.needed == Units(2, 8)
    assert plan.days == pytest.approx(38.339, abs=1e-3)
    assert "That misses the deadline." in plan_html(plan)


def test_whole_units_are_not_rounded_up_by_float_noise() -> None:
    # 1,382,400 s is exactly two units of 691,200 s.
    assert units_needed(1_382_400, 864_000, 0.8) == 2
    assert units_needed(1_382_401, 864_000, 0.8) == 3
    assert units_needed(0, 864_000, 0.8) == 0
    assert available_seconds(DEADLINE, NOW) == 864_000
    with pytest.raises(PlanError, match="has passed"):
        available_seconds(dt.date(2026, 12, 31), NOW)


def test_growth_counts_per_item_and_per_media_second() -> None:
    growth = store_growth(backlog(1000), GROWTH)
    # photos 500 x 3 MB = 1.5 GB; videos 300 x 120 s x 1 MB/s = 36 GB; recordings 200 x 200 kB
    assert growth.blob_bytes == pytest.approx(1.5e9 + 3.6e10 + 4e7)
    # videos 300 x 50 kB = 15 MB; recordings 200 x 1 kB = 200 kB
    assert growth.artifact_bytes == pytest.approx(1.5e7 + 2e5)
    # photos 500 x 5; videos 300 x (10 + 0.1 x 120); recordings 200 x 4
    assert growth.db_rows == pytest.approx(2500 + 6600 + 800)
    with pytest.raises(PlanError, match="no store growth for audio"):
        store_growth(backlog(1000), GROWTH[:2])


def test_mix_must_sum_to_one_and_name_known_kinds() -> None:
    with pytest.raises(PlanError, match="sum to 1"):
        Backlog(100, {"photo": 0.7, "video": 0.2}, 1, 1)
    with pytest.raises(PlanError, match="unknown kind"):
        Backlog(100, {"photo": 0.5, "pdf": 0.5})
    assert parse_mix("photo=0.7, video=0.2,audio=0.1") == {
        "photo": 0.7,
        "video": 0.2,
        "audio": 0.1,
    }
    with pytest.raises(PlanError, match="name=value"):
        parse_mix("photo:0.7")
    assert parse_units("cpu=64,gpu=2") == Units(64, 2)
    assert parse_units("cpu=8") == Units(8, 0)
    with pytest.raises(PlanError, match="unknown device"):
        parse_units("tpu=4")


def test_a_stage_without_a_cost_for_a_kind_in_the_mix_is_refused() -> None:
    required = {**REQUIRED, "video": ("probe", "keyframes", "transcript")}
    with pytest.raises(PlanError, match=r"no cost for stage\(s\) keyframes on video items"):
        make_plan(backlog(), [cpu_bench()], cluster=Units(64, 0), required=required)
    # Without videos in the mix, keyframes is not needed.
    photos_audio = Backlog(1000, {"photo": 0.5, "audio": 0.5}, 0, 1)
    make_plan(photos_audio, [cpu_bench()], cluster=Units(64, 0), required=required)


def test_gpu_only_costs_on_a_cluster_without_gpus_are_refused() -> None:
    gpu = gpu_bench()
    only_gpu = BenchFile(gpu.machine, {}, {}, [*cpu_bench().costs[:3], *gpu.costs[1:]], GROWTH)
    with pytest.raises(PlanError, match=r"only GPU costs for transcript \(audio\)"):
        make_plan(backlog(), [only_gpu], cluster=Units(64, 0), required=REQUIRED, efficiency=MARGIN)


def test_two_bench_files_of_one_class_costing_the_same_stage_are_refused() -> None:
    with pytest.raises(PlanError, match="two bench files give a CPU cost for stage probe"):
        make_plan(
            backlog(),
            [cpu_bench(), cpu_bench()],
            cluster=Units(64, 0),
            required=REQUIRED,
            efficiency=MARGIN,
        )


def test_html_has_the_chart_and_no_external_resources() -> None:
    plan = _cpu_and_gpu_nodes_by_deadline()
    page = plan_html(plan)
    assert "<svg" in page and "<polyline" in page and 'class="deadline"' in page
    assert not re.search(r"https?://", page)
    # 1..8 nodes at least, twice the 4 nodes the deadline needs; 4 nodes clear it in time.
    assert [nodes for nodes, _ in plan.curve] == list(range(1, 9))
    assert plan.curve[3][1] == pytest.approx(5_300_000 / (8 * 0.8) / 86_400)
    assert plan.curve[3][1] < 10 < plan.curve[2][1]
    assert json.loads(json.dumps(plan_json(plan)))["needed"] == {"cpu": 2, "gpu": 8}


def test_stage_names_are_escaped_in_the_page() -> None:
    hostile = cpu_bench([cost("<script>", "photo", "cpu", 0.1)])
    page = plan_html(
        make_plan(backlog(), [hostile], cluster=Units(64, 0), required=REQUIRED, efficiency=MARGIN)
    )
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_bench_file_round_trips_and_bad_files_are_refused(tmp_path: Path) -> None:
    bench = gpu_bench()
    path = tmp_path / "bench.json"
    write_bench(bench, path)
    assert load_bench(path) == bench
    data = json.loads(path.read_text())
    data["format"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(BenchFileError, match="format 99"):
        load_bench(path)
    data["format"] = FORMAT_VERSION
    del data["costs"][0]["seconds_per_item"]
    path.write_text(json.dumps(data))
    with pytest.raises(BenchFileError, match="seconds_per_item"):
        load_bench(path)
    with pytest.raises(BenchFileError, match="unknown device"):
        cost("probe", "photo", "tpu", 1.0)


def _registry_bench(path: Path, device_of_transcript: str, cores: int, gpus: int) -> Path:
    """A bench file costing every registered stage on every kind it processes, 0.1 s each."""
    costs = [
        cost(stage, kind, device_of_transcript if stage == "transcript" else "cpu", 0.1)
        for kind, stages in required_stages().items()
        for stage in stages
        if device_of_transcript == "cpu" or stage == "transcript"
    ]
    gpu_list = [{"name": "GPU", "memory_bytes": 2**34}] * gpus
    write_bench(BenchFile({"cores": cores, "gpus": gpu_list}, {}, {}, costs, GROWTH), path)
    return path


def test_cli_plan_end_to_end(tmp_path: Path) -> None:
    cpu = _registry_bench(tmp_path / "cpu.json", "cpu", cores=32, gpus=0)
    gpu = _registry_bench(tmp_path / "gpu.json", "gpu", cores=16, gpus=1)
    page = tmp_path / "plan.html"
    runner = CliRunner()
    common = [
        "--data",
        str(tmp_path / "data"),
        "plan",
        "--backlog",
        "100000",
        "--mix",
        "photo=0.7,video=0.2,audio=0.1",
        "--video-minutes",
        "1",
        "--audio-minutes",
        "0.5",
        "--bench",
        str(cpu),
        "--bench",
        str(gpu),
        "--cluster",
        "cpu=64,gpu=2",
        "--efficiency",
        str(MARGIN),
    ]
    result = runner.invoke(app, [*common, "--json", "--html", str(page)])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    # CPU: photos 70,000 x 3 stages + videos 20,000 x 4 + recordings 10,000 x 2, at 0.1 s:
    # (210,000 + 80,000 + 20,000) x 0.1 = 31,000 core-s. GPU: 30,000 x 0.1 = 3,000 GPU-s.
    assert plan["device_seconds"] == pytest.approx({"cpu": 31_000, "gpu": 3_000})
    # CPU 31,000 / 51.2 = 605.5 s, GPU 3,000 / 1.6 = 1,875 s: GPU-bound, 1,875 / 86,400 days.
    assert plan["days"] == pytest.approx(1_875 / 86_400)
    assert plan["bottleneck"] == {"device": "gpu", "stage": "transcript"}
    assert "<svg" in page.read_text()

    table = runner.invoke(app, [*common, "--deadline", "2999-01-01"])
    assert table.exit_code == 0, table.output
    assert "transcript" in table.stdout and "Bottleneck: GPU, mostly stage transcript" in (
        table.stdout
    )

    refused = runner.invoke(app, [*common[:6], "photo=0.7,video=0.2", *common[7:]])
    assert refused.exit_code == 2
    assert "sum to 1" in refused.output

    default = runner.invoke(app, [*common[:-2], "--json"])
    assert default.exit_code == 0, default.output
    assert json.loads(default.stdout)["efficiency"] == EFFICIENCY
    too_high = runner.invoke(app, [*common[:-1], "1.5"])
    assert too_high.exit_code == 2 and "efficiency" in too_high.output
