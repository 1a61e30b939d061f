"""vmpooler's /status and /summary numbers are what the VMs say: counts and clone/boot times per
day and pool, summed in SQL (issue 14), on the local calendar of TIME_ZONE."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.leases.models import OnDemandRequest
from apps.pools.models import VM, VMState
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def local_zone(settings):
    # Far from UTC, so a VM made late in the evening is on another day in UTC.
    settings.TIME_ZONE = "America/New_York"


def _vm(pool, *, created: datetime, took: float | None, state: str = VMState.READY, **kw) -> VM:
    vm = factories.vm(pool, state=state, **kw) if pool else VM.objects.create(
        name=f"loose-{created:%H%M}", state=state, vcenter_id=kw["template"].vcenter_id, **kw)
    ready = created + timedelta(seconds=took) if took is not None else None
    VM.objects.filter(pk=vm.pk).update(created_at=created, ready_at=ready)  # created_at is auto_now_add
    return vm


@pytest.fixture
def clones(local_zone):
    """Yesterday 23:30 a clone that became ready today at 00:10 (2,400 s); today, in alpha one
    of 90 s and one still cloning, in beta one of 30 s, and one of 60 s of no pool."""
    alpha, beta = factories.pool(name="alpha"), factories.pool(name="beta")
    midnight = datetime.combine(timezone.localdate(), time.min, tzinfo=timezone.get_current_timezone())
    _vm(alpha, created=midnight - timedelta(minutes=30), took=2400, state=VMState.LEASED)
    _vm(alpha, created=midnight + timedelta(hours=1), took=90)
    _vm(alpha, created=midnight + timedelta(hours=2), took=None, state=VMState.CLONING)
    _vm(beta, created=midnight + timedelta(hours=3), took=30)
    _vm(None, created=midnight + timedelta(hours=4), took=60, template=alpha.template)
    # A VM from last week counts on no day asked for here.
    _vm(beta, created=midnight - timedelta(days=7), took=5, state=VMState.DESTROYED)
    return alpha, beta


def _times(total: float, timed: int, low: float, high: float) -> dict:
    return {"average": round(total / timed, 1), "min": low, "max": high, "total": total}


def test_status_counts_and_times_todays_clones_and_boots(client, clones):
    body = client.get("/api/v3/status").json()
    clone, boot = body["clone"], body["boot"]
    # Today's clones: 90 s and untimed in alpha, 30 s in beta, 60 s in no pool.
    assert clone["count"] == {"total": 4, "pool": {"alpha": {"total": 2}, "beta": {"total": 1}}}
    assert clone["duration"] == {**_times(180, 3, 30, 90),
                                 "pool": {"alpha": _times(90, 1, 90, 90), "beta": _times(30, 1, 30, 30)}}
    # Today's boots: yesterday's 2,400 s clone became ready today, with the three timed ones.
    assert boot["count"] == {"total": 4, "pool": {"alpha": {"total": 2}, "beta": {"total": 1}}}
    assert boot["duration"] == {**_times(2580, 4, 30, 2400),
                                "pool": {"alpha": _times(2490, 2, 90, 2400), "beta": _times(30, 1, 30, 30)}}


def test_status_queue_and_pools_count_vms_by_state(client, clones, engineer):
    alpha, beta = clones
    factories.vm(beta, state=VMState.BOOTING)
    factories.vm(beta, state=VMState.DESTROYING)
    OnDemandRequest.objects.create(request_id="r1", user=engineer, wanted={"alpha": 2, "beta": 1},
                                   status=OnDemandRequest.Status.QUEUED)
    body = client.get("/api/v3/status").json()
    # alpha: leased, ready, cloning; beta: ready, booting, destroying (and a destroyed one).
    assert body["queue"] == {"requested": 3, "pending": 2, "cloning": 1, "booting": 1, "ready": 2, "running": 1,
                             "completed": 1, "total": 5}
    last_boot = VM.objects.filter(pool=alpha).exclude(ready_at=None).order_by("-ready_at")[0].ready_at
    assert body["pools"]["alpha"] == {"ready": 1, "running": 1, "pending": 1, "max": 2,
                                      "lastBoot": last_boot.isoformat()}
    assert body["pools"]["beta"]["ready"] == 1 and body["pools"]["beta"]["pending"] == 1
    assert body["capacity"] == {"current": 2, "total": 4, "percent": 50.0}


def test_summary_over_two_days_adds_up_each_day(client, clones):
    yesterday = timezone.localdate() - timedelta(days=1)
    body = client.get(f"/api/v3/summary?from={yesterday.isoformat()}").json()
    assert body["clone"]["count"] == {"total": 5, "pool": {"alpha": {"total": 3}, "beta": {"total": 1}}}
    assert body["clone"]["duration"] == {**_times(2580, 4, 30, 2400),
                                         "pool": {"alpha": _times(2490, 2, 90, 2400), "beta": _times(30, 1, 30, 30)}}
    first, second = body["daily"]
    assert first["date"] == yesterday.isoformat()
    assert first["clone"]["count"] == {"total": 1, "pool": {"alpha": {"total": 1}}}
    assert first["clone"]["duration"]["total"] == 2400
    assert first["boot"]["count"] == {"total": 0, "pool": {}}
    assert first["boot"]["duration"] == {"average": 0, "min": 0, "max": 0, "total": 0, "pool": {}}
    assert second["clone"]["count"]["total"] == 4 and second["boot"]["count"]["total"] == 4
    durations = client.get(f"/api/v3/summary/boot/duration?from={yesterday.isoformat()}").json()
    assert set(durations["boot"]) == {"duration"} and durations["boot"]["duration"]["max"] == 2400


def test_status_issues_as_many_queries_for_30_pools_as_for_3(client, local_zone):
    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get("/api/v3/status").status_code == 200
        return len(ctx.captured_queries)

    def pools(n: int) -> None:
        for _ in range(n):
            pool = factories.pool()
            for state in (VMState.READY, VMState.LEASED, VMState.BOOTING):
                _vm(pool, created=timezone.now() - timedelta(minutes=5), took=120, state=state)

    pools(3)
    few = count()
    pools(27)
    assert count() == few
