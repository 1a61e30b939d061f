"""Automatic sizing end to end: real PostgreSQL, Redis, RQ worker processes and the simulator.

A burst of checkouts grows the pool and the fill makes the VMs; a quiet spell (windows shrunk
to seconds through the settings) shrinks it back to its smallest size, step by step, and the
ready VMs it no longer needs are destroyed in vCenter too. A schedule active now and checkouts
that found the pool empty grow it as well."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from datetime import time as dt_time

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.jobs.models import Job
from apps.leases import services as leases
from apps.pools.models import Pool, PoolSchedule, VMState
from tests.live import GUEST, make_pool, settle, site, vms_in_folder

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]


def ready(pool: Pool) -> int:
    return pool.vms.filter(state=VMState.READY).count()


def test_a_burst_grows_an_automatic_pool_and_a_quiet_spell_shrinks_it_back(vcsim_factory, redis_conn, engineer,
                                                                            settings):
    settings.VMPORTAL_AUTOSIZE_WINDOW = 30
    settings.VMPORTAL_AUTOSIZE_SHRINK_AFTER = 1
    settings.VMPORTAL_AUTOSIZE_HEADROOM = 100
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, size=0, autosize=True, min_size=2, max_size=6)

    settle(pool)  # the first reconcile raises the size to the smallest one
    pool.refresh_from_db()
    assert (pool.size, ready(pool)) == (2, 2), [(j.kind, j.status, j.error) for j in Job.objects.all()]

    leases.checkout(user=engineer, pools=[pool] * 2)
    settle(pool)  # 2 checkouts at once, +100%: grows to 4 and fills
    pool.refresh_from_db()
    assert (pool.size, ready(pool)) == (4, 4)
    leases.checkout(user=engineer, pools=[pool] * 4)
    burst_at = time.monotonic()
    settle(pool)  # 4 at once wants 8: the largest size, 6
    pool.refresh_from_db()
    assert (pool.size, ready(pool)) == (6, 6)
    assert len(vms_in_folder(vc)) == 6 + 6  # ready and leased

    # Quiet: once the burst is out of the window the pool shrinks, halfway per step.
    time.sleep(max(0.0, settings.VMPORTAL_AUTOSIZE_WINDOW - (time.monotonic() - burst_at)) + 1)
    deadline = time.monotonic() + 60
    while pool.size > 2 and time.monotonic() < deadline:
        settle(pool)
        pool.refresh_from_db()
        time.sleep(settings.VMPORTAL_AUTOSIZE_SHRINK_AFTER)
    settle(pool)
    pool.refresh_from_db()
    assert (pool.size, ready(pool)) == (2, 2)
    sizes = [e.after["size"] for e in AuditEvent.objects.filter(action="pool.autosize").order_by("at", "id")]
    assert sizes == [2, 4, 6, 4, 3, 2]
    shrinks = AuditEvent.objects.filter(action="pool.autosize", message__startswith="Shrank")
    assert all("0 checkouts in the last 30s" in e.message for e in shrinks), [e.message for e in shrinks]
    assert len(vms_in_folder(vc)) == 2 + 6  # the leased VMs are untouched
    assert pool.vms.filter(state=VMState.LEASED).count() == 6


def test_a_schedule_and_checkouts_that_found_the_pool_empty_grow_the_pool_the_workers_fill(
        vcsim_factory, redis_conn, engineer, settings):
    settings.VMPORTAL_AUTOSIZE_HEADROOM = 0
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, size=0, autosize=True, min_size=1, max_size=6)
    local = timezone.localtime()
    if local.time() >= dt_time(23, 58):
        pytest.skip("a window around now would cross midnight")
    start = max(datetime.combine(local.date(), dt_time(0)), local.replace(tzinfo=None) - timedelta(hours=1)).time()
    PoolSchedule.objects.create(pool=pool, weekdays=str(local.weekday()), start=start.replace(second=0, microsecond=0),
                                end=dt_time(23, 59), min_size=3)

    settle(pool)  # the schedule's floor, not the pool's smallest size
    pool.refresh_from_db()
    assert (pool.size, ready(pool)) == (3, 3)
    assert "schedule " in AuditEvent.objects.get(action="pool.autosize").message

    leases.checkout(user=engineer, pools=[pool] * 3)
    for _ in range(2):  # the pool is empty until the fill catches up: two misses, one VM each
        with pytest.raises(leases.PoolEmpty):
            leases.checkout(user=engineer, pools=[pool])
    settle(pool)  # 3 checkouts within one fill time and 2 misses: 3 + 2
    pool.refresh_from_db()
    assert (pool.size, ready(pool)) == (5, 5)
    last = AuditEvent.objects.filter(action="pool.autosize").latest("at", "id")
    assert last.message.startswith("Grew 3 → 5: 3 checkouts") and "2 VMs asked of an empty pool" in last.message
