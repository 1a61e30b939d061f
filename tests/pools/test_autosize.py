"""Pools that size themselves: the rule (pure), its bounds in the pool form, and reconcile applying
it through the admin's path with an audited reason (real PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.leases import services as leases
from apps.pools import autosize
from apps.pools import reconfigure as services
from apps.pools.forms import PoolForm
from apps.pools.manager import reconcile_pool
from apps.pools.models import Pool, VMState
from tests import factories

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
CONFIG = autosize.Config(window=timedelta(minutes=60), shrink_after=timedelta(minutes=15), headroom=50,
                         default_fill=timedelta(minutes=2))


def demand(checkouts=(), *, yesterday=(), empty=0, fill=timedelta(minutes=2), last_change=None):
    return autosize.Demand(checkouts=[NOW - timedelta(seconds=s) for s in checkouts],
                           yesterday=[NOW - timedelta(days=1) + timedelta(seconds=s) for s in yesterday],
                           empty_events=empty, fill_time=fill, last_change=last_change)


def decide(size, d, *, lo=1, hi=20, now=NOW):
    return autosize.decide(size=size, min_size=lo, max_size=hi, demand=d, now=now, config=CONFIG)


def test_peak_counts_the_most_checkouts_within_one_interval():
    times = [NOW + timedelta(seconds=s) for s in (0, 10, 20, 200, 205)]
    assert autosize.peak(times, timedelta(seconds=30)) == 3
    assert autosize.peak(times, timedelta(seconds=5)) == 1
    assert autosize.peak([], timedelta(seconds=30)) == 0


def test_a_burst_grows_the_pool_at_once_to_its_peak_plus_headroom():
    d = decide(2, demand([1, 5, 30, 60, 90, 100]))  # 6 within one 2-minute fill time
    assert d.size == 9
    assert d.reason.startswith("Grew 2 → 9: 6 checkouts in the last 60 min (0.10/min), at most 6 within one "
                               "fill time of 2 min")


def test_growth_stops_at_the_largest_size_and_a_quiet_pool_keeps_the_smallest():
    assert decide(2, demand(range(0, 100, 2)), hi=8).size == 8
    assert decide(0, demand(), lo=3).size == 3
    assert decide(3, demand(), lo=3).reason == ""


def test_a_quiet_pool_shrinks_halfway_and_not_within_shrink_after_of_its_last_change():
    recent = NOW - timedelta(minutes=5)
    assert decide(10, demand(last_change=recent)).size == 10
    d = decide(10, demand(last_change=NOW - timedelta(minutes=20)))
    assert d.size == 6 and d.reason.startswith("Shrank 10 → 6: 0 checkouts")
    assert decide(2, demand(last_change=None)).size == 1


def test_each_empty_pool_event_adds_a_vm_beyond_what_checkouts_ask():
    d = decide(4, demand([1], empty=3))
    assert d.size == 7 and "3 VMs asked of an empty pool" in d.reason


def test_yesterdays_burst_in_the_coming_hour_is_met_before_it_starts():
    d = decide(1, demand(yesterday=[600, 610, 620, 630]))
    assert d.size == 6 and "4 within one fill time in the same hour yesterday" in d.reason


# ---------------------------------------------------------------- with the database


@pytest.fixture
def auto_pool(ready_pool, redis_conn):
    """redis_conn: an empty Redis, with no pool-empty checkouts of an earlier test's pool of the same id."""
    Pool.objects.filter(pk=ready_pool.pk).update(autosize=True, min_size=1, max_size=6)
    ready_pool.refresh_from_db()
    return ready_pool


def ready_vms(pool, n):
    return [factories.vm(pool, state=VMState.READY, ready_at=timezone.now()) for _ in range(n)]


@pytest.mark.django_db
def test_autosize_is_off_by_default_and_reconcile_keeps_the_admins_size(ready_pool, engineer):
    assert (ready_pool.autosize, ready_pool.min_size, ready_pool.max_size) == (False, 0, 0)
    ready_vms(ready_pool, 2)
    leases.checkout(user=engineer, pools=[ready_pool, ready_pool])
    reconcile_pool(ready_pool.pk)
    ready_pool.refresh_from_db()
    assert ready_pool.size == 2
    assert not AuditEvent.objects.filter(action="pool.autosize").exists()


@pytest.mark.django_db
def test_checkouts_grow_an_automatic_pool_through_the_admins_path_with_the_reason(auto_pool, engineer, settings):
    settings.VMPORTAL_AUTOSIZE_HEADROOM = 100
    ready_vms(auto_pool, 2)
    leases.checkout(user=engineer, pools=[auto_pool, auto_pool])
    report = reconcile_pool(auto_pool.pk)
    auto_pool.refresh_from_db()
    assert auto_pool.size == 4
    assert report.deficit == 4 and report.fill_started
    event = AuditEvent.objects.get(action="pool.autosize")
    assert (event.before, event.after, event.actor_name) == ({"size": 2}, {"size": 4}, "system")
    assert event.message.startswith("Grew 2 → 4: 2 checkouts in the last 60 min")
    assert event.message.endswith("clone 4, 2 leased VMs untouched.")
    reconcile_pool(auto_pool.pk)  # the same demand: no second change
    assert AuditEvent.objects.filter(action="pool.autosize").count() == 1


@pytest.mark.django_db
def test_a_quiet_automatic_pool_shrinks_and_drains_its_oldest_ready_vms(auto_pool, settings):
    settings.VMPORTAL_AUTOSIZE_SHRINK_AFTER = 0
    Pool.objects.filter(pk=auto_pool.pk).update(size=5)
    ready_vms(auto_pool, 5)
    report = reconcile_pool(auto_pool.pk)  # 5 → 3
    assert len(report.destroy) == 2
    reconcile_pool(auto_pool.pk)  # 3 → 2
    reconcile_pool(auto_pool.pk)  # 2 → 1
    auto_pool.refresh_from_db()
    assert auto_pool.size == 1
    assert [e.after["size"] for e in AuditEvent.objects.filter(action="pool.autosize").order_by("at", "id")] \
        == [3, 2, 1]
    assert auto_pool.vms.filter(state=VMState.READY).count() == 1


@pytest.mark.django_db
def test_draining_turns_automatic_sizing_off_so_the_pool_stays_empty(auto_pool):
    pool, _ = services.drain(pool_id=auto_pool.pk)
    assert (pool.size, pool.autosize) == (0, False)
    reconcile_pool(pool.pk)
    pool.refresh_from_db()
    assert pool.size == 0


def form_data(pool, **changes):
    data = {f"edit-{k}": v for k, v in {
        "name": pool.name, "template": pool.template_id, "cluster": pool.cluster_id, "folder": pool.folder_id,
        "size": pool.size, "lease_lifetime": "02:00:00", "lease_max_lifetime": "24:00:00",
        "boot_timeout": "00:10:00", "max_tries": 3, "enabled": "on", "alias_weight": 1, "min_size": 0,
        "max_size": 0,
    }.items()}
    data.update({f"edit-{k}": v for k, v in changes.items()})
    return data


@pytest.mark.django_db
@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"autosize": "on", "min_size": 5, "max_size": 3}, "min_size", "at most the largest (3)"),
    ({"min_size": 5, "max_size": 3}, "min_size", "at most the largest (3)"),
    ({"autosize": "on", "min_size": 0, "max_size": 0}, "max_size", "at least 1"),
    ({"autosize": "on", "min_size": 1, "max_size": 501}, "max_size", "between 0 and 500"),
])
def test_pool_form_keeps_min_at_most_max_at_most_the_largest_pool(ready_pool, settings, changes, field, message):
    settings.VMPORTAL_MAX_POOL_SIZE = 500
    form = PoolForm(form_data(ready_pool, **changes), instance=ready_pool, prefix="edit")
    assert not form.is_valid()
    assert message in " ".join(form.errors[field]), form.errors


@pytest.mark.django_db
def test_pool_page_shows_the_automatic_size_and_the_reason_of_its_last_change(auto_pool, admin_user, client,
                                                                              engineer, settings):
    settings.VMPORTAL_AUTOSIZE_HEADROOM = 100
    ready_vms(auto_pool, 2)
    leases.checkout(user=engineer, pools=[auto_pool, auto_pool])
    reconcile_pool(auto_pool.pk)
    client.force_login(admin_user)
    page = client.get(reverse("adminui:pool-detail", args=[auto_pool.pk])).content.decode()
    assert "automatic</span> within 1–6" in page
    assert "Grew 2 → 4: 2 checkouts in the last 60 min (0.03/min)" in page
