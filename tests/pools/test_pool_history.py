"""Pool history: the pool manager's cycle samples each pool's counts (at most once a minute,
kept a week and a day) and the pool page draws them, with values on hover."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.pools import history, manager
from apps.pools.models import PoolSample, VMState
from tests import factories

pytestmark = pytest.mark.django_db


def _pool_with_vms():
    pool = factories.pool(name="hist-pool", size=4)
    for state in (VMState.READY, VMState.READY, VMState.BOOTING, VMState.CLONING, VMState.LEASED):
        factories.vm(pool, state=state)
    factories.vm(pool, state=VMState.CLONING, on_demand=True)
    factories.vm(pool, state=VMState.DESTROYED)
    return pool


def test_a_sample_counts_ready_booting_leased_and_on_demand_vms_of_every_pool():
    pool = _pool_with_vms()
    idle = factories.pool(name="idle-pool", size=0)
    assert history.record_samples() == 2
    sample = PoolSample.objects.get(pool=pool)
    assert (sample.ready, sample.booting, sample.leased, sample.on_demand) == (2, 2, 1, 1)
    assert PoolSample.objects.filter(pool=idle, ready=0, booting=0, leased=0, on_demand=0).count() == 1


def test_samples_are_taken_at_most_once_a_minute_and_pruned_after_eight_days():
    pool = factories.pool(size=1)
    now = timezone.now()
    old = PoolSample.objects.create(pool=pool, at=now - timedelta(days=8, minutes=1))
    kept = PoolSample.objects.create(pool=pool, at=now - timedelta(days=7))
    assert history.record_samples(now=now) == 1
    assert history.record_samples(now=now + timedelta(seconds=30)) == 0
    assert history.record_samples(now=now + timedelta(seconds=61)) == 1
    assert not PoolSample.objects.filter(pk=old.pk).exists()
    assert PoolSample.objects.filter(pk=kept.pk).exists()
    assert PoolSample.objects.filter(pool=pool).count() == 3


def test_the_pool_managers_cycle_takes_the_samples(redis_conn):
    factories.pool(size=0)
    manager.reconcile_all()
    assert PoolSample.objects.count() == 1


def test_pool_page_draws_the_last_day_with_values_on_hover_and_switches_to_a_week(client, admin_user):
    pool = _pool_with_vms()
    now = timezone.now()
    PoolSample.objects.create(pool=pool, at=now - timedelta(hours=3), ready=3, booting=1, leased=2, on_demand=0)
    PoolSample.objects.create(pool=pool, at=now - timedelta(days=3), ready=9, booting=0, leased=0, on_demand=0)
    client.force_login(admin_user)
    url = reverse("adminui:pool-detail", args=[pool.pk])
    day = client.get(url).content.decode()
    assert 'id="pool-history"' in day and "<polygon" in day
    assert ": 3 ready, 1 booting, 2 leased, 0 on demand</title>" in day
    assert "9 ready" not in day
    week = client.get(url, {"history": "7d"}).content.decode()
    assert ": 9 ready, 0 booting, 0 leased, 0 on demand</title>" in week
    assert 'aria-current="true">7d</a>' in week
    assert client.get(url, {"history": "<script>"}).status_code == 200  # an unknown range is the day
