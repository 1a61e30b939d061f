"""vmpooler's public reads: /status, /summary, /poolstat, /totalrunning and the dashboard's two routes."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db.models import Count, DurationField, ExpressionWrapper, F, Max, Min, Q, Sum
from django.db.models.functions import TruncDate
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from apps.api.decorators import api_view
from apps.api.http import ApiError, ok
from apps.leases.models import Lease, OnDemandRequest
from apps.pools.models import VM, Pool, VMState
from apps.pools.selectors import pools_with_counts

STATUS_VIEWS = ("capacity", "queue", "clone", "boot", "pools")


def _alias(pool: Pool) -> dict:
    # vmpooler shows "alias" only for pools that have one.
    return {"alias": pool.alias_list} if pool.alias_list else {}


def _status(request: HttpRequest) -> HttpResponse:
    views = set(request.GET["view"].split(",")) if request.GET.get("view") else set(STATUS_VIEWS)
    pools = list(pools_with_counts())
    empty = [p.name for p in pools if p.enabled and p.size and not p.ready_count]
    body: dict = {"status": {"ok": not empty, "message": f"Found {len(empty)} empty pools." if empty
                             else "Battle station fully armed and operational."}}
    if empty:
        body["status"]["empty"] = empty
    ready = sum(p.ready_count for p in pools)
    if "capacity" in views:
        total = sum(p.size for p in pools)
        body["capacity"] = {"current": ready, "total": total,
                            "percent": round(100 * ready / total, 1) if total else 0}
    if "queue" in views:
        pending = sum(p.booting_count for p in pools)
        running = sum(p.leased_count for p in pools)
        requested = sum(r.total for r in OnDemandRequest.objects.filter(
            status__in=(OnDemandRequest.Status.QUEUED, OnDemandRequest.Status.PROVISIONING)))
        states = VM.objects.filter(state__in=(VMState.CLONING, VMState.BOOTING, VMState.DESTROYING)).aggregate(
            cloning=Count("pk", filter=Q(state=VMState.CLONING)), booting=Count("pk", filter=Q(state=VMState.BOOTING)),
            completed=Count("pk", filter=Q(state=VMState.DESTROYING)))
        body["queue"] = {"requested": requested, "pending": pending, "cloning": states["cloning"],
                         "booting": states["booting"], "ready": ready, "running": running,
                         "completed": states["completed"], "total": ready + pending + running}
    today = timezone.localdate()
    for kind in ("clone", "boot"):
        if kind in views:
            body[kind] = _task_metrics(kind, today, today)[today]
    if "pools" in views:
        last_boot = dict(VM.objects.filter(ready_at__isnull=False).values_list("pool_id")
                         .annotate(last=Max("ready_at")))
        body["pools"] = {p.name: {"ready": p.ready_count, "running": p.leased_count, "pending": p.booting_count,
                                  "max": p.size, "lastBoot": last_boot[p.pk].isoformat() if p.pk in last_boot else "",
                                  **_alias(p)} for p in pools}
    return ok(body)


@dataclass(frozen=True)
class TaskTimes:
    """How many clones or boots, and the seconds those that finished took (vmpooler's count
    and duration metrics), summed in SQL; two of them add up without losing anything."""

    count: int = 0
    timed: int = 0  # of count, those with a ready time
    total: float = 0.0
    shortest: float | None = None
    longest: float | None = None

    def __add__(self, other: TaskTimes) -> TaskTimes:
        lows = [x for x in (self.shortest, other.shortest) if x is not None]
        highs = [x for x in (self.longest, other.longest) if x is not None]
        return TaskTimes(self.count + other.count, self.timed + other.timed, self.total + other.total,
                         min(lows, default=None), max(highs, default=None))

    def durations(self) -> dict:
        total = round(self.total, 2) if self.timed else 0
        return {"average": round(total / self.timed, 1) if self.timed else 0,
                "min": round(self.shortest, 2) if self.shortest is not None else 0,
                "max": round(self.longest, 2) if self.longest is not None else 0, "total": total}


def _seconds(value: timedelta | None) -> float | None:
    return value.total_seconds() if value is not None else None


def _task_times(kind: str, start: date, end: date) -> dict[date, dict[str, TaskTimes]]:
    """Per day and pool, the clones or boots and how long they took. A clone counts the day it
    started, a boot the day its VM became ready; both last from clone start to ready, since
    vmportal does not time the clone apart from the boot. One grouped query: the VMs of the
    range never come to Python (10k of them took 100-400 ms)."""
    field = "created_at" if kind == "clone" else "ready_at"
    zone = timezone.get_current_timezone()
    # A range of the column itself, not of its local date, so an index on it could serve.
    since = datetime.combine(start, time.min, tzinfo=zone)
    before = datetime.combine(end + timedelta(days=1), time.min, tzinfo=zone)
    took = ExpressionWrapper(F("ready_at") - F("created_at"), output_field=DurationField())
    rows = (VM.objects.filter(**{f"{field}__gte": since, f"{field}__lt": before})
            .annotate(day=TruncDate(field, tzinfo=zone), took=took)
            .values("day", "pool__name").order_by("day", "pool__name")
            .annotate(n=Count("pk"), timed=Count("ready_at"), total=Sum("took"), shortest=Min("took"),
                      longest=Max("took")))
    days: dict[date, dict[str, TaskTimes]] = {start + timedelta(days=n): {} for n in range((end - start).days + 1)}
    for row in rows:
        day = days.get(row["day"])
        if day is not None:
            pool = row["pool__name"] or ""
            day[pool] = day.get(pool, TaskTimes()) + TaskTimes(
                row["n"], row["timed"], _seconds(row["total"]) or 0.0, _seconds(row["shortest"]),
                _seconds(row["longest"]))
    return days


def _metrics(by_pool: dict[str, TaskTimes]) -> dict:
    """vmpooler's task metrics: {count: {total, pool}, duration: {average, min, max, total, pool}}."""
    every = sum(by_pool.values(), TaskTimes())
    named = {p: t for p, t in by_pool.items() if p}
    return {"count": {"total": every.count, "pool": {p: {"total": t.count} for p, t in named.items()}},
            "duration": {**every.durations(), "pool": {p: t.durations() for p, t in named.items()}}}


def _task_metrics(kind: str, start: date, end: date) -> dict[date, dict]:
    return {day: _metrics(by_pool) for day, by_pool in _task_times(kind, start, end).items()}


def _tag_metrics(start: date, end: date, only: str | None) -> dict[date, dict]:
    """vmpooler's tag summary: per day, per tag name, how many leases carried each value."""
    days: dict[date, dict] = {start + timedelta(days=n): {} for n in range((end - start).days + 1)}
    for started, tags in Lease.objects.filter(started_at__date__gte=start, started_at__date__lte=end) \
            .exclude(tags={}).values_list("started_at", "tags"):
        day = days.get(timezone.localdate(started))
        if day is None:
            continue
        for key, value in tags.items():
            if only and key != only:
                continue
            counts = day.setdefault(key, {"total": 0})
            counts[str(value)] = counts.get(str(value), 0) + 1
            counts["total"] += 1
    return days


MAX_SUMMARY_DAYS = 366
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _date_range(request: HttpRequest) -> tuple[date, date]:
    today = timezone.localdate()
    parsed = []
    for name in ("from", "to"):
        raw = request.GET.get(name) or today.isoformat()
        try:
            if not DATE.match(raw):
                raise ValueError
            parsed.append(datetime.strptime(raw, "%Y-%m-%d").date())  # noqa: DTZ007 - a calendar day
        except ValueError:
            raise ApiError(f"Invalid date format {raw[:20]!r} for {name}, must match YYYY-MM-DD.") from None
    start, end = parsed
    if end < start:
        raise ApiError("Date range is invalid, 'to' cannot come before 'from'.")
    if start > today:
        raise ApiError("Date range is invalid, 'from' must be in the past.")
    if (end - start).days >= MAX_SUMMARY_DAYS:
        raise ApiError(f"Ask for at most {MAX_SUMMARY_DAYS} days at a time.")
    return start, end


def _task_summary(kind: str, start: date, end: date, only: str | None = None) -> dict:
    times = _task_times(kind, start, end)
    whole: dict[str, TaskTimes] = defaultdict(TaskTimes)
    for by_pool in times.values():
        for pool, t in by_pool.items():
            whole[pool] += t

    def pick(metrics: dict) -> dict:  # vmpooler's sub-route key: "count" or "duration"
        return {k: v for k, v in metrics.items() if not only or k == only}

    return {kind: pick(_metrics(whole)),
            "daily": [{"date": day.isoformat(), kind: pick(_metrics(by_pool))} for day, by_pool in times.items()]}


def _tag_summary(start: date, end: date, only: str | None = None) -> dict:
    per_day = _tag_metrics(start, end, only)
    total: dict = {}
    for tags in per_day.values():
        for key, counts in tags.items():
            into = total.setdefault(key, {})
            for value, n in counts.items():
                into[value] = into.get(value, 0) + n
    return {"tag": total, "daily": [{"date": day.isoformat(), "tag": tags} for day, tags in per_day.items()]}


def _summary(request: HttpRequest) -> HttpResponse:
    start, end = _date_range(request)
    boot, clone, tag = _task_summary("boot", start, end), _task_summary("clone", start, end), _tag_summary(start, end)
    daily = [{"date": b["date"], "boot": b["boot"], "clone": c["clone"], "tag": t["tag"]}
             for b, c, t in zip(boot["daily"], clone["daily"], tag["daily"], strict=True)]
    return ok({"boot": boot["boot"], "clone": clone["clone"], "tag": tag["tag"], "daily": daily})


def _summary_part(request: HttpRequest, route: str, key: str | None = None) -> HttpResponse:
    start, end = _date_range(request)
    if route in ("boot", "clone"):
        return ok(_task_summary(route, start, end, key))
    if route == "tag":
        return ok(_tag_summary(start, end, key))
    raise ApiError(f"No such summary: {route[:32]!r}; use boot, clone or tag.", 404)


def _poolstat(request: HttpRequest) -> HttpResponse:
    wanted = {n for n in request.GET.get("pool", "").split(",") if n}
    pools = pools_with_counts()
    if wanted:  # names or aliases, as vmpooler
        pools = [p for p in pools if p.name in wanted or wanted & set(p.alias_list)]
    return ok({"pools": {p.name: {"ready": p.ready_count, "max": p.size, **_alias(p)} for p in pools}})


def _dashboard_pool(request: HttpRequest) -> HttpResponse:
    body = {p.name: {"size": p.size, "ready": p.ready_count} for p in pools_with_counts()}
    if request.GET.get("history"):
        # No Graphite here: the history is the one current point, as vmpooler without one.
        for entry in body.values():
            entry["history"] = [entry["ready"]]
    return JsonResponse(body)


def _dashboard_running(request: HttpRequest) -> HttpResponse:
    body: dict = {}
    for p in pools_with_counts():
        major = p.name.split("-", 1)[0]  # vmpooler groups pools by the word before the first '-'
        body.setdefault(major, {"running": 0})["running"] += p.leased_count
    return JsonResponse(body)


def _totalrunning(request: HttpRequest) -> HttpResponse:
    return ok({"running": Lease.objects.active().count()})


status = api_view(public=("GET",))({"GET": _status})
summary = api_view(public=("GET",))({"GET": _summary})
summary_part = api_view(public=("GET",))({"GET": _summary_part})
poolstat = api_view(public=("GET",))({"GET": _poolstat})
totalrunning = api_view(public=("GET",))({"GET": _totalrunning})
dashboard_pool = api_view(public=("GET",))({"GET": _dashboard_pool})
dashboard_running = api_view(public=("GET",))({"GET": _dashboard_running})
