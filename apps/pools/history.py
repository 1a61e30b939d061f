"""Pool history: VM counts sampled by the pool manager's cycle, and the stacked chart of them
on a pool's page (server-side SVG: no script, values on hover through <title>)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Max, Q
from django.utils import timezone
from django.utils.html import format_html_join
from django.utils.safestring import SafeString

from apps.pools.models import VM, Pool, PoolSample, VMState

SAMPLE_EVERY = timedelta(minutes=1)
RETENTION = timedelta(days=8)  # the 7-day chart, and a day to spare
RANGES = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}
SERIES = ("ready", "booting", "leased", "on_demand")
LABELS = {"ready": "ready", "booting": "booting", "leased": "leased", "on_demand": "on demand"}


def record_samples(*, now: datetime | None = None) -> int:
    """One sample per pool, unless the last was taken less than SAMPLE_EVERY ago (the manager
    may cycle every few seconds); then drop samples past RETENTION. Two pool managers racing
    may both sample in one minute: the chart just has a point more."""
    now = now or timezone.now()
    last = PoolSample.objects.aggregate(last=Max("at"))["last"]
    if last is not None and now - last < SAMPLE_EVERY:
        return 0
    making = Q(state__in=(VMState.CLONING, VMState.BOOTING))
    counts = {
        row["pool"]: row
        for row in VM.objects.filter(pool__isnull=False).values("pool").annotate(
            ready=Count("pk", filter=Q(state=VMState.READY)),
            booting=Count("pk", filter=making & Q(on_demand=False)),
            leased=Count("pk", filter=Q(state=VMState.LEASED)),
            on_demand=Count("pk", filter=making & Q(on_demand=True)),
        )
    }
    empty = dict.fromkeys(SERIES, 0)
    samples = [
        PoolSample(pool_id=pk, at=now, **{k: counts.get(pk, empty)[k] for k in SERIES})
        for pk in Pool.objects.values_list("pk", flat=True)
    ]
    PoolSample.objects.bulk_create(samples)
    PoolSample.objects.filter(at__lt=now - RETENTION).delete()
    return len(samples)


# The chart's geometry, in SVG user units.
WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 34, 8, 8, 22
BUCKETS = 144  # 10-minute columns over a day, 70-minute ones over a week


@dataclass(frozen=True)
class Column:
    x: float
    width: float
    title: str


@dataclass(frozen=True)
class Chart:
    range: str
    ranges: tuple[str, ...]
    width: int
    height: int
    areas: list[tuple[str, str]]  # (series, polygon points), bottom series first
    y_ticks: list[tuple[float, int]]  # (y, value)
    x_ticks: list[tuple[float, str]]  # (x, label)
    columns: list[Column]
    plot: tuple[int, int, int, int]  # left, top, right, bottom
    empty: bool
    labels: dict[str, str]

    def hover_rects(self) -> SafeString:
        """The columns' hover targets as SVG, built here: 144 rects through the template
        language cost more than the rest of the pool page's chart (issue 14)."""
        top, height = self.plot[1], self.plot[3] - 8
        return format_html_join("", '<rect class="hover" x="{}" y="{}" width="{}" height="{}"><title>{}</title></rect>',
                                ((c.x, top, c.width, height, c.title) for c in self.columns))


def _nice_max(value: int) -> int:
    for scale in (1, 10, 100, 1000):
        for step in (1, 2, 5):
            if value <= 4 * step * scale:
                return 4 * step * scale
    return value


def pool_history(pool: Pool, range_name: str = "24h", *, now: datetime | None = None) -> Chart:
    """The stacked chart of ``pool``'s samples over ``range_name`` (a key of RANGES): each column
    holds the largest counts seen in its time slice, so a short peak is not averaged away."""
    range_name = range_name if range_name in RANGES else "24h"
    span = RANGES[range_name]
    now = now or timezone.now()
    start = now - span
    slice_ = span / BUCKETS
    buckets: list[dict[str, int] | None] = [None] * BUCKETS
    rows = PoolSample.objects.filter(pool=pool, at__gte=start).order_by("at").values_list("at", *SERIES)
    for at, *values in rows:
        i = min(int((at - start) / slice_), BUCKETS - 1)
        current = buckets[i]
        total = sum(values)
        if current is None or total > sum(current.values()):
            buckets[i] = dict(zip(SERIES, values, strict=True))
    top = _nice_max(max((sum(b.values()) for b in buckets if b), default=0) or 1)
    left, right, top_y, bottom = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM
    col_w = (right - left) / BUCKETS

    def y(v: float) -> float:
        return round(bottom - (bottom - top_y) * v / top, 1)

    # A slice without samples (the manager was down) draws as zero, not as a line across it.
    stacks = [[0] * BUCKETS]
    for name in SERIES:
        stacks.append([stacks[-1][i] + (b[name] if b else 0) for i, b in enumerate(buckets)])
    # Every x and every stack's y worked out once (not per point of every polygon): the
    # page's chart was 6 ms of rounding (issue 14).
    xs = [round(left + col_w * i, 1) for i in range(BUCKETS + 1)]
    ys = [[y(v) for v in stack] for stack in stacks]
    areas = []
    for n, name in enumerate(SERIES):
        up, down = ys[n + 1], ys[n]
        upper = [f"{xs[i]},{up[i]} {xs[i + 1]},{up[i]}" for i in range(BUCKETS)]
        lower = [f"{xs[i + 1]},{down[i]} {xs[i]},{down[i]}" for i in reversed(range(BUCKETS))]
        areas.append((name, " ".join(upper + lower)))
    zone = timezone.get_current_timezone()  # looked up once, not for each of 144 columns

    def local(at: datetime) -> datetime:
        return at.astimezone(zone)

    fmt = "%H:%M" if range_name == "24h" else "%a %d"
    columns = []
    for i, b in enumerate(buckets):
        at = local(start + slice_ * i)
        what = ", ".join(f"{b[k]} {LABELS[k]}" for k in SERIES) if b else "no samples"
        columns.append(Column(xs[i], round(col_w, 2), f"{at:%a %H:%M}: {what}"))
    x_ticks = []
    for k in range(5):
        at = start + span * k / 4
        x_ticks.append((round(left + (right - left) * k / 4, 1), f"{local(at):{fmt}}"))
    y_ticks = [(y(top * k / 4), int(top * k / 4)) for k in range(5)]
    return Chart(range_name, tuple(RANGES), WIDTH, HEIGHT, areas, y_ticks, x_ticks, columns,
                 (left, top_y, right, bottom), not any(buckets), LABELS)
