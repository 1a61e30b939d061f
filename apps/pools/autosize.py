"""Pools that size themselves: the pool manager sets a pool's size from its own recent demand.

The demand signal is what the audit log already holds for every pool, append-only and indexed
by (pool, time): each checkout (``lease.checkout``, an on-demand delivery too) and each
on-demand request (``ondemand.request``: someone wanted a VM and none was ready). Leases and
on-demand requests live in a layer above the pools; their audit events do not, and need no
second sampler.

The rule (``decide``, pure): a pool must hold enough ready VMs for the checkouts that can
arrive while a new VM is cloned and booted (its fill time, measured from its own recent VMs),
so the size covers the busiest fill-time interval of the last WINDOW seconds, and of the coming
WINDOW of the same time yesterday (a daily burst is met before it starts), plus HEADROOM percent.
Each VM asked of the empty pool since the last automatic change adds one VM on top. It grows
at once; it shrinks no sooner than SHRINK_AFTER seconds after the last automatic change, and
then only halfway towards the target, so a lull between two bursts does not throw away the VMs
the second one needs.

A checkout that finds the pool empty (PoolEmpty: the API's 503) writes no audit event, as
its transaction rolls back; ``record_empty`` notes it in Redis instead, one sorted set per
pool shared by every web process, and such a miss counts like an on-demand request. A client
retrying every few seconds must not read as a crowd, so each person counts once per minute
(with the VMs they lacked), and an on-demand request made in the same minute after the miss
(the web page does that) is the same need, not a second one. A checkout with no person behind
it (a script) counts each time.

Schedules (PoolSchedule) raise the smallest size during windows of the week, e.g. Mon-Fri
08:00-18:00 at least 10, in TIME_ZONE: the effective floor is the larger of the pool's
smallest size and any active schedule's.

Autosize writes ``size`` through reconfigure.update_pool, the admin's path: the same lock,
validation, drain of excess ready VMs (oldest first, never a leased one), audit event
(``pool.autosize``, with the rate that caused it) and nudge.
"""

from __future__ import annotations

import logging
import math
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.signals import request_started
from django.db import transaction
from django.db.models import Avg, DurationField, ExpressionWrapper, F
from django.forms.models import BaseModelFormSet
from django.utils import timezone
from redis.exceptions import RedisError

from apps.audit import services as audit
from apps.audit.context import current_actor
from apps.audit.models import AuditEvent
from apps.core.redis_client import redis_client
from apps.pools import nudge, reconfigure
from apps.pools.models import VM, Pool, PoolSchedule

log = logging.getLogger(__name__)

CHECKOUT = "lease.checkout"
EMPTY = "ondemand.request"
CHANGE = "pool.autosize"
SCHEDULE_CHANGE = "pool.schedule"
EMPTY_KEY = "vmportal:autosize:empty:"  # + pool id: a sorted set of "minute:user:lacking", scored by time
# Fill time is learned from this many of the pool's latest VMs, and kept within these bounds
# (a guest that took an hour once must not make the pool hold an hour of checkouts).
FILL_SAMPLE = 20
FILL_MIN = timedelta(seconds=5)
FILL_MAX = timedelta(minutes=30)


@dataclass(frozen=True)
class Config:
    window: timedelta
    shrink_after: timedelta
    headroom: int  # percent
    default_fill: timedelta

    @classmethod
    def from_settings(cls) -> Config:
        return cls(
            window=timedelta(seconds=settings.VMPORTAL_AUTOSIZE_WINDOW),
            shrink_after=timedelta(seconds=settings.VMPORTAL_AUTOSIZE_SHRINK_AFTER),
            headroom=settings.VMPORTAL_AUTOSIZE_HEADROOM,
            default_fill=timedelta(seconds=settings.VMPORTAL_AUTOSIZE_FILL_SECONDS),
        )


@dataclass(frozen=True)
class Demand:
    """What the pool's recent history says, as ``demand`` reads it."""

    checkouts: list[datetime]  # within the window, any order
    yesterday: list[datetime]  # within [now - 1 day, now - 1 day + window]
    empty_events: int  # VMs asked of the empty pool since the last automatic change (deduplicated)
    fill_time: timedelta
    last_change: datetime | None  # of the size, by autosize


@dataclass(frozen=True)
class Decision:
    size: int
    reason: str

    def changes(self, current: int) -> bool:
        return self.size != current


def peak(times: list[datetime], span: timedelta) -> int:
    """The most of ``times`` within any interval of length ``span``."""
    ordered = sorted(times)
    best = start = 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - span:
            start += 1
        best = max(best, end - start + 1)
    return best


def _seconds(d: timedelta) -> str:
    s = int(d.total_seconds())
    return f"{s // 60} min" if s >= 120 and s % 60 == 0 else f"{s}s"


def decide(*, size: int, min_size: int, max_size: int, demand: Demand, now: datetime, config: Config,
           schedule: PoolSchedule | None = None) -> Decision:
    """The size a pool should have now (pure: tested without a database). ``schedule`` is
    the active schedule entry with the largest size, if any."""
    floor, scheduled = min_size, ""
    if schedule is not None and schedule.min_size > min_size:
        floor, scheduled = min(schedule.min_size, max_size), schedule.label
    busiest = peak(demand.checkouts, demand.fill_time)
    daily = peak(demand.yesterday, demand.fill_time)
    covered = max(busiest, daily)
    want = math.ceil(covered * (100 + config.headroom) / 100)
    if demand.empty_events:
        want = max(want, size + demand.empty_events)
    want = min(max(want, floor), max_size)
    rate = len(demand.checkouts) / max(config.window.total_seconds() / 60, 1 / 60)
    why = (f"{len(demand.checkouts)} checkouts in the last {_seconds(config.window)} ({rate:.2f}/min), "
           f"at most {busiest} within one fill time of {_seconds(demand.fill_time)}")
    if daily > busiest:
        why += f"; {daily} within one fill time in the same hour yesterday"
    if demand.empty_events:
        why += f"; {demand.empty_events} VM{'s' if demand.empty_events != 1 else ''} asked of an empty pool"
    why += f"; wants {want} (+{config.headroom}% headroom, within {floor}..{max_size}"
    if scheduled:
        why += f": schedule {scheduled}"
    why += ")"
    if want > size:
        return Decision(want, f"Grew {size} → {want}: {why}.")
    if want < size:
        if demand.last_change is not None and now - demand.last_change < config.shrink_after:
            return Decision(size, "")
        # Halfway, rounded towards the old size: a quiet spell shrinks the pool over a few
        # SHRINK_AFTER intervals, not at once.
        new = size - max(1, (size - want) // 2)
        return Decision(new, f"Shrank {size} → {new}: {why}.")
    return Decision(size, "")


def fill_time(pool: Pool, default: timedelta) -> timedelta:
    """How long the pool's latest VMs took from slot to ready (``default`` before it has any)."""
    recent = (VM.objects.filter(pool=pool, ready_at__isnull=False).order_by("-ready_at")
              .values_list("pk", flat=True)[:FILL_SAMPLE])
    took = VM.objects.filter(pk__in=list(recent)).aggregate(
        t=Avg(ExpressionWrapper(F("ready_at") - F("created_at"), output_field=DurationField())))["t"]
    if took is None:
        return default
    return min(max(took, FILL_MIN), FILL_MAX)


def measure(pool: Pool, *, now: datetime, config: Config) -> Demand:
    events = AuditEvent.objects.filter(pool_id=pool.pk)
    last_change = events.filter(action=CHANGE).order_by("-at").values_list("at", flat=True).first()
    since = max(last_change or now - config.window, now - config.window)
    day = timedelta(days=1)
    return Demand(
        checkouts=list(events.filter(action=CHECKOUT, at__gt=now - config.window).values_list("at", flat=True)),
        yesterday=list(events.filter(action=CHECKOUT, at__gt=now - day, at__lte=now - day + config.window)
                       .values_list("at", flat=True)),
        empty_events=empty_demand(pool.pk, since=since, now=now),
        fill_time=fill_time(pool, config.default_fill),
        last_change=last_change,
    )


def autosize_pool(pool: Pool, *, now: datetime | None = None, config: Config | None = None) -> Pool:
    """Set an automatic pool's size from its demand; returns the pool as it is now.

    Called by reconcile_pool inside its transaction, with the pool row locked: the change and
    its audit event commit with that reconcile, and a second pool manager waits for the lock
    and then sees the change (its own decision is then no change)."""
    if not pool.autosize or not pool.enabled:
        return pool
    now = now or timezone.now()
    config = config or Config.from_settings()
    decision = decide(size=pool.size, min_size=pool.min_size, max_size=pool.max_size,
                      demand=measure(pool, now=now, config=config), now=now, config=config,
                      schedule=max(active_schedules(pool, now), key=lambda e: e.min_size, default=None))
    if not decision.changes(pool.size):
        return pool
    try:
        changed, _ = reconfigure.update_pool(pool_id=pool.pk, changes={"size": decision.size}, action=CHANGE,
                                             message=decision.reason)
    except ValidationError as exc:
        # The pool is invalid for another reason (inventory changed under it): the admin's
        # form shows why; the pool keeps its size and the manager goes on.
        log.warning("Automatic sizing of pool %s skipped: %s", pool.name, exc)
        return pool
    return changed


def last_change(pool: Pool) -> AuditEvent | None:
    """The latest automatic size change of ``pool``, for its page."""
    return AuditEvent.objects.filter(pool_id=pool.pk, action=CHANGE).order_by("-at", "-id").first()


# --- schedules -------------------------------------------------------------------------------


def active_schedules(pool: Pool, now: datetime) -> list[PoolSchedule]:
    """The pool's schedule entries whose window holds ``now`` (start included, end not), in
    TIME_ZONE: a pool of a Berlin office is larger from 08:00 Berlin time, summer and winter."""
    local = timezone.localtime(now, timezone.get_default_timezone())
    day, at = str(local.weekday()), local.time()
    return [e for e in pool.schedules.all() if day in e.weekdays and e.start <= at < e.end]


def schedule_labels(pool: Pool) -> list[str]:
    return [str(e) for e in pool.schedules.all()]


@transaction.atomic
def save_schedules(*, pool: Pool, formset: BaseModelFormSet) -> bool:
    """Save the pool's schedule entries as edited (a valid inline formset of the pool page or the admin),
    audited as one ``pool.schedule`` event with the entries before and after; returns
    whether any changed."""
    before = schedule_labels(pool)
    formset.save()
    after = schedule_labels(pool)
    if before == after:
        return False
    audit.record(SCHEDULE_CHANGE, target=pool, pool=pool, before={"schedules": before}, after={"schedules": after},
                 message=f"Schedules: {'; '.join(after) or 'none'}.")
    nudge.nudge(pool.pk)
    return True


# --- checkouts that found the pool empty -------------------------------------------------------

# Set when a checkout of this request found a pool empty, so the log filter can tell the
# answer's 503 from a server fault (vmportal.logfilters); cleared as each request starts.
_answered_empty: ContextVar[bool] = ContextVar("vmportal_pool_empty", default=False)


def _new_request(**kwargs: object) -> None:
    _answered_empty.set(False)


request_started.connect(_new_request, dispatch_uid="vmportal.autosize.new_request")


def answered_pool_empty() -> bool:
    """Whether a checkout of the current request found a pool empty."""
    return _answered_empty.get()


def record_empty(pool_id: int, lacking: int) -> None:
    """Note that someone lacked ``lacking`` VMs of the pool (PoolEmpty). One Redis round trip;
    with Redis down the miss is not counted and the checkout answers as before."""
    _answered_empty.set(True)
    at = timezone.now().timestamp()
    # The same person, minute and count is one member: a retry only moves its time. A
    # checkout with no person behind it (a script, the bench) counts each time.
    who = current_actor().user_id or f"-{uuid.uuid4().hex[:12]}"
    key = f"{EMPTY_KEY}{pool_id}"
    try:
        pipe = redis_client().pipeline(transaction=False)
        pipe.zadd(key, {f"{int(at // 60)}:{who}:{max(1, lacking)}": at})
        pipe.zremrangebyscore(key, "-inf", at - settings.VMPORTAL_AUTOSIZE_WINDOW)
        pipe.expire(key, settings.VMPORTAL_AUTOSIZE_WINDOW)
        pipe.execute()
    except RedisError as exc:
        log.info("Empty-pool checkout of pool %s not counted for automatic sizing (%s).", pool_id, exc)


def empty_demand(pool_id: int, *, since: datetime, now: datetime) -> int:
    """VMs asked of the empty pool after ``since``: misses (record_empty) and on-demand
    requests, each person counted once per minute with the most they lacked in it."""
    lacked: dict[tuple[int, str], int] = {}

    def note(minute: int, who: str, n: int) -> None:
        lacked[(minute, who)] = max(lacked.get((minute, who), 0), n)

    try:
        misses = [m.decode() if isinstance(m, bytes) else str(m) for m in
                  redis_client().zrangebyscore(f"{EMPTY_KEY}{pool_id}", f"({since.timestamp()}", now.timestamp())]
    except RedisError as exc:
        log.info("Empty-pool checkouts of pool %s unknown (%s); on-demand requests still count.", pool_id, exc)
        misses = []
    for member in misses:
        minute, who, n = member.split(":")
        note(int(minute), who, int(n))
    requests = AuditEvent.objects.filter(pool_id=pool_id, action=EMPTY, at__gt=since, at__lte=now)
    for pk, at, user_id, after in requests.values_list("pk", "at", "actor_id", "after"):
        wanted = (after or {}).get("wanted") or {}
        note(int(at.timestamp() // 60), str(user_id or f"-event{pk}"), sum(int(n) for n in wanted.values()) or 1)
    return sum(lacked.values())
