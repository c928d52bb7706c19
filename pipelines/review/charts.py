"""The backlog page's throughput chart: jobs ended per hour, laid out here and drawn by the
template as inline SVG (no script, no library: it must render from disk and under a strict
Content-Security-Policy).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass

WIDTH, HEIGHT = 720, 220
#: Room for the y axis's numbers and title on the left, the hours and their title below.
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 44
#: At most this many hour labels under the axis, so they never overlap.
MAX_X_LABELS = 8
#: Hours between labels, the smallest of these that keeps to MAX_X_LABELS.
_LABEL_STEPS = (1, 2, 3, 6, 12, 24, 48, 72, 168)
#: A chart of the last day at least, even when everything ended in the last hour.
MIN_HOURS = 24
HOUR = dt.timedelta(hours=1)


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    hour: dt.datetime
    count: int


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class HourlyChart:
    """Bars, axis ticks and a sentence saying what the chart shows, for those who cannot see it."""

    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    summary: str


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^k at or above `value`: round numbers on the axis."""
    if value <= 1:
        return 1
    magnitude = int(10 ** math.floor(math.log10(value)))
    return next(step * magnitude for step in (1, 2, 5, 10) if step * magnitude >= value)


def hourly_chart(counts: Mapping[dt.datetime, int], now: dt.datetime, days: int) -> HourlyChart:
    """Bars for the hours from the first with any count (within `days` of `now`, and at
    least MIN_HOURS back) to the hour `now` is in; `counts` are keyed by each hour's start."""
    last = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    earliest = last - dt.timedelta(days=days) + HOUR
    seen = [hour for hour, count in counts.items() if count and hour >= earliest]
    first = min([*seen, last - (MIN_HOURS - 1) * HOUR])
    hours = [first + n * HOUR for n in range(int((last - first) / HOUR) + 1)]
    top = _nice_ceiling(max((counts.get(hour, 0) for hour in hours), default=0))
    plot_right, plot_bottom = WIDTH - RIGHT, HEIGHT - BOTTOM
    slot = (plot_right - LEFT) / len(hours)
    bars = []
    for number, hour in enumerate(hours):
        count = counts.get(hour, 0)
        height = (plot_bottom - TOP) * count / top
        bars.append(
            Bar(
                x=round(LEFT + number * slot + slot * 0.1, 2),
                y=round(plot_bottom - height, 2),
                width=round(slot * 0.8, 2),
                height=round(height, 2),
                hour=hour,
                count=count,
            )
        )
    step = next(
        (s for s in _LABEL_STEPS if math.ceil(len(hours) / s) <= MAX_X_LABELS), _LABEL_STEPS[-1]
    )
    # Labels on the clock's round hours (hours since the epoch start at a UTC midnight).
    labelled = [
        (number, hour)
        for number, hour in enumerate(hours)
        if int(hour.timestamp()) // 3600 % step == 0
    ]
    x_ticks = [
        Tick(
            round(LEFT + number * slot + slot / 2, 2),
            hour.strftime("%m-%d %H:00" if index == 0 or hour.hour == 0 else "%H:00"),
        )
        for index, (number, hour) in enumerate(labelled)
    ]
    y_ticks = [
        Tick(round(plot_bottom - (plot_bottom - TOP) * share, 2), f"{round(top * share):,}")
        for share in (0.0, 0.5, 1.0)
        if share == 0.0 or top * share == round(top * share)
    ]
    total = sum(bar.count for bar in bars)
    if total:
        busiest = max(bars, key=lambda bar: bar.count)
        summary = (
            f"{total:,} jobs ended between {hours[0]:%Y-%m-%d %H:00} and"
            f" {last + HOUR:%Y-%m-%d %H:00} UTC; the busiest hour"
            f" ({busiest.hour:%Y-%m-%d %H:00}) ended {busiest.count:,}."
        )
    else:
        summary = f"No job ended in the last {days} days."
    return HourlyChart(
        WIDTH, HEIGHT, LEFT, plot_right, TOP, plot_bottom, bars, y_ticks, x_ticks, summary
    )
