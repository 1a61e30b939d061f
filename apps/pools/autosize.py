"""Pools that size themselves: the pool manager sets a pool's size from its own recent demand.

The demand signal is what the audit log already holds for every pool, append-only and indexed
by (pool, time): each checkout (``lease.checkout``, an on-demand delivery too) and each
empty-pool event (``ondemand.request``: someone wanted a VM and none was ready). Leases and
on-demand requests live in a layer above the pools; their audit events do not, and need no
second sampler.

The rule (``decide``, pure): a pool must hold enough ready VMs for the checkouts that can
arrive while a new VM is cloned and booted (its fill time, measured from its own recent VMs),
so the size covers the busiest fill-time interval of the last WINDOW seconds, and of the coming
WINDOW of the same time yesterday (a daily burst is met before it starts), plus HEADROOM percent.
Each empty-pool event since the last automatic change adds one VM on top. It grows at once;
it shrinks no sooner than SHRINK_AFTER seconds after the last automatic change, and then only
halfway towards the target, so a lull between two bursts does not throw away the VMs the
second one needs.

Autosize writes ``size`` through reconfigure.update_pool, the admin's path: the same lock,
validation, drain of excess ready VMs (oldest first, never a leased one), audit event
(``pool.autosize``, with the rate that caused it) and nudge.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Avg, DurationField, ExpressionWrapper, F
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.pools import reconfigure
from apps.pools.models import VM, Pool

log = logging.getLogger(__name__)

CHECKOUT = "lease.checkout"
EMPTY = "ondemand.request"
CHANGE = "pool.autosize"
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
    empty_events: int  # on-demand requests since the last automatic change
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


def decide(*, size: int, min_size: int, max_size: int, demand: Demand, now: datetime, config: Config) -> Decision:
    """The size a pool should have now (pure: tested without a database)."""
    busiest = peak(demand.checkouts, demand.fill_time)
    daily = peak(demand.yesterday, demand.fill_time)
    covered = max(busiest, daily)
    want = math.ceil(covered * (100 + config.headroom) / 100)
    if demand.empty_events:
        want = max(want, size + demand.empty_events)
    want = min(max(want, min_size), max_size)
    rate = len(demand.checkouts) / max(config.window.total_seconds() / 60, 1 / 60)
    why = (f"{len(demand.checkouts)} checkouts in the last {_seconds(config.window)} ({rate:.2f}/min), "
           f"at most {busiest} within one fill time of {_seconds(demand.fill_time)}")
    if daily > busiest:
        why += f"; {daily} within one fill time in the same hour yesterday"
    if demand.empty_events:
        why += f"; {demand.empty_events} found the pool empty"
    why += f"; wants {want} (+{config.headroom}% headroom, within {min_size}..{max_size})"
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
    since_change = last_change or now - config.window
    day = timedelta(days=1)
    return Demand(
        checkouts=list(events.filter(action=CHECKOUT, at__gt=now - config.window).values_list("at", flat=True)),
        yesterday=list(events.filter(action=CHECKOUT, at__gt=now - day, at__lte=now - day + config.window)
                       .values_list("at", flat=True)),
        empty_events=events.filter(action=EMPTY, at__gt=max(since_change, now - config.window)).count(),
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
                      demand=measure(pool, now=now, config=config), now=now, config=config)
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
