"""Automatic sizing, continued: weekly schedules that raise a pool's smallest size, checkouts that
found the pool empty counted as demand (through Redis, across processes), and their 503 logged
as a WARNING. Real PostgreSQL and Redis throughout."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time, timedelta

import pytest
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.log import log_response
from redis import Redis

from apps.api import tokens
from apps.audit.models import AuditEvent
from apps.leases import services as leases
from apps.pools import autosize
from apps.pools.manager import reconcile_pool
from apps.pools.models import Pool, PoolSchedule, VMState, weekdays_label
from tests import factories
from tests.pools.test_autosize import CONFIG, NOW, demand, form_data
from tests.pools.test_django_admin import _pool_change
from tests.pools.test_pool_admin import pool_folder

# 2026-03-02 is a Monday; Berlin is UTC+1 in winter and UTC+2 from 2026-03-29.
MONDAY = datetime(2026, 3, 2, tzinfo=UTC)
WORKDAYS = PoolSchedule(weekdays="01234", start=time(8), end=time(18), min_size=10)


def test_weekdays_read_as_runs():
    assert [weekdays_label(d) for d in ("01234", "0123456", "56", "024", "01256", "3")] == [
        "Mon-Fri", "Mon-Sun", "Sat-Sun", "Mon,Wed,Fri", "Mon-Wed,Sat-Sun", "Thu"]


def test_an_active_schedule_raises_the_floor_and_says_so():
    d = autosize.decide(size=2, min_size=1, max_size=20, demand=demand(), now=NOW, config=CONFIG, schedule=WORKDAYS)
    assert d.size == 10
    assert d.reason.startswith("Grew 2 → 10: 0 checkouts in the last 60 min")
    assert d.reason.endswith("wants 10 (+50% headroom, within 10..20: schedule Mon-Fri 08:00-18:00).")


def test_a_schedule_never_takes_the_pool_past_its_largest_size_nor_below_its_own_demand():
    d = autosize.decide(size=2, min_size=1, max_size=6, demand=demand(), now=NOW, config=CONFIG, schedule=WORKDAYS)
    assert d.size == 6 and "within 6..6: schedule Mon-Fri" in d.reason
    busy = demand(range(0, 100, 10))  # 10 checkouts within one fill time, +50%: 15
    assert autosize.decide(size=2, min_size=1, max_size=20, demand=busy, now=NOW, config=CONFIG,
                           schedule=WORKDAYS).size == 15


def test_after_its_window_the_pool_shrinks_as_any_quiet_pool_does():
    quiet = demand(last_change=NOW - timedelta(minutes=20))
    assert autosize.decide(size=10, min_size=1, max_size=20, demand=quiet, now=NOW, config=CONFIG).size == 6
    assert autosize.decide(size=10, min_size=1, max_size=20, demand=quiet, now=NOW, config=CONFIG,
                           schedule=WORKDAYS).size == 10


# ---------------------------------------------------------------- with the database


@pytest.fixture
def auto_pool(ready_pool, redis_conn):
    """redis_conn: an empty Redis, with no pool-empty checkouts of an earlier test's pool of the same id."""
    pool_folder(ready_pool)  # the pool form requires one
    Pool.objects.filter(pk=ready_pool.pk).update(autosize=True, min_size=1, max_size=20)
    ready_pool.refresh_from_db()
    return ready_pool


def _active_at(pool, at: datetime) -> bool:
    return bool(autosize.active_schedules(pool, at))


@pytest.mark.django_db
@pytest.mark.parametrize(("at", "active"), [
    (MONDAY.replace(hour=6, minute=59, second=59), False),  # 07:59:59 in Berlin
    (MONDAY.replace(hour=7), True),  # 08:00 in Berlin: the start is in the window
    (MONDAY.replace(hour=16, minute=59, second=59), True),
    (MONDAY.replace(hour=17), False),  # 18:00: the end is not
    (MONDAY + timedelta(days=4, hours=12), True),  # Friday noon
    (MONDAY + timedelta(days=5, hours=12), False),  # Saturday noon
    (MONDAY - timedelta(hours=12), False),  # Sunday noon
    (datetime(2026, 3, 30, 6, 0, tzinfo=UTC), True),  # summer time: 08:00 in Berlin is 06:00 UTC
    (datetime(2026, 3, 30, 16, 30, tzinfo=UTC), False),  # and 18:30 is 16:30 UTC
])
def test_a_window_is_read_in_the_configured_time_zone_start_included_end_not(auto_pool, settings, at, active):
    settings.TIME_ZONE = "Europe/Berlin"
    PoolSchedule.objects.create(pool=auto_pool, weekdays="01234", start=time(8), end=time(18), min_size=10)
    assert _active_at(auto_pool, at) is active


@pytest.mark.django_db
def test_the_weekday_is_the_local_one(auto_pool, settings):
    settings.TIME_ZONE = "Asia/Tokyo"  # UTC+9: Sunday 23:30 UTC is Monday 08:30 in Tokyo
    PoolSchedule.objects.create(pool=auto_pool, weekdays="0", start=time(8), end=time(9), min_size=10)
    assert _active_at(auto_pool, MONDAY - timedelta(minutes=30))
    assert not _active_at(auto_pool, MONDAY + timedelta(hours=23, minutes=30))  # Tuesday 08:30 there


@pytest.mark.django_db
def test_reconcile_applies_the_largest_active_schedule_with_the_reason_audited(auto_pool):
    PoolSchedule.objects.create(pool=auto_pool, weekdays="01234", start=time(8), end=time(18), min_size=8)
    PoolSchedule.objects.create(pool=auto_pool, weekdays="0", start=time(9), end=time(10), min_size=12)
    PoolSchedule.objects.create(pool=auto_pool, weekdays="56", start=time(0), end=time(23, 59), min_size=15)
    pool = autosize.autosize_pool(auto_pool, now=MONDAY.replace(hour=9, minute=30))
    assert pool.size == 12
    event = AuditEvent.objects.get(action="pool.autosize")
    assert (event.before, event.after) == ({"size": 2}, {"size": 12})
    assert "within 12..20: schedule Mon 09:00-10:00)." in event.message
    # An automatic pool off schedule is left to its demand; a pool sized by hand ignores schedules.
    assert autosize.autosize_pool(pool, now=MONDAY.replace(hour=9, minute=45)).size == 12
    Pool.objects.filter(pk=pool.pk).update(autosize=False, size=2)
    pool.refresh_from_db()
    assert autosize.autosize_pool(pool, now=MONDAY.replace(hour=9, minute=30)).size == 2


# ---------------------------------------------------------------- editing schedules


def schedule_rows(*rows, initial=0):
    data = {"schedule-TOTAL_FORMS": len(rows), "schedule-INITIAL_FORMS": initial,
            "schedule-MIN_NUM_FORMS": 0, "schedule-MAX_NUM_FORMS": 1000}
    for i, row in enumerate(rows):
        for key, value in row.items():
            data[f"schedule-{i}-{key}"] = value
    return data


def post_settings(client, pool, *rows, initial=0, **changes):
    data = form_data(pool, **{"autosize": "on", "min_size": pool.min_size, "max_size": pool.max_size, **changes})
    return client.post(reverse("adminui:pool-detail", args=[pool.pk]), {**data, **schedule_rows(*rows,
                                                                                                 initial=initial)})


WEEKDAYS_8_TO_18 = {"weekdays": ["0", "1", "2", "3", "4"], "start": "08:00", "end": "18:00", "min_size": "10"}


@pytest.mark.django_db
def test_an_admin_adds_a_schedule_on_the_pool_page_audited_and_shown(auto_pool, admin_user, client):
    client.force_login(admin_user)
    response = post_settings(client, auto_pool, WEEKDAYS_8_TO_18)
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = PoolSchedule.objects.get(pool=auto_pool)
    assert (entry.weekdays, entry.start, entry.end, entry.min_size) == ("01234", time(8), time(18), 10)
    event = AuditEvent.objects.get(action="pool.schedule")
    assert (event.before, event.after) == ({"schedules": []}, {"schedules": ["Mon-Fri 08:00-18:00 at least 10"]})
    assert event.actor_name == admin_user.username
    page = client.get(response["Location"]).content.decode()
    assert "Mon-Fri 08:00-18:00 at least 10" in page

    # Edit it, add a weekend row, then remove the first: each save one audited event.
    rows = [{"id": entry.pk, "weekdays": ["0", "2", "4"], "start": "07:30", "end": "18:00", "min_size": "12"},
            {"weekdays": ["5", "6"], "start": "10:00", "end": "14:00", "min_size": "3"}]
    assert post_settings(client, auto_pool, *rows, initial=1).status_code == 302
    assert sorted(str(e) for e in auto_pool.schedules.all()) == ["Mon,Wed,Fri 07:30-18:00 at least 12",
                                                                "Sat-Sun 10:00-14:00 at least 3"]
    weekend = auto_pool.schedules.get(weekdays="56")
    rows = [{"id": entry.pk, "weekdays": ["0"], "start": "07:30", "end": "18:00", "min_size": "12", "DELETE": "on"},
            {"id": weekend.pk, "weekdays": ["5", "6"], "start": "10:00", "end": "14:00", "min_size": "3"}]
    assert post_settings(client, auto_pool, *rows, initial=2).status_code == 302
    assert [str(e) for e in auto_pool.schedules.all()] == ["Sat-Sun 10:00-14:00 at least 3"]
    assert AuditEvent.objects.filter(action="pool.schedule").count() == 3
    # Saving again unchanged writes nothing; a post without the schedule rows leaves them be.
    assert post_settings(client, auto_pool, rows[1], initial=1).status_code == 302
    data = form_data(auto_pool, autosize="on", min_size=1, max_size=20)
    assert client.post(reverse("adminui:pool-detail", args=[auto_pool.pk]), data).status_code == 302
    assert auto_pool.schedules.count() == 1 and AuditEvent.objects.filter(action="pool.schedule").count() == 3


@pytest.mark.django_db
@pytest.mark.parametrize(("row", "changes", "words"), [
    ({"start": "18:00", "end": "08:00"}, {}, "The end must be after the start"),
    ({"start": "08:00", "end": "08:00"}, {}, "The end must be after the start"),
    ({"min_size": "21"}, {}, "At most the pool&#x27;s largest size (20)"),
    ({"min_size": "12"}, {"max_size": 10}, "At most the pool&#x27;s largest size (10)"),  # the bound just posted
    ({"min_size": "0"}, {"min_size": 2}, "At least the pool&#x27;s smallest size (2)"),
    ({"min_size": "501"}, {}, "between 0 and 500"),
    ({"min_size": "-1"}, {}, "greater than or equal to 0"),
    ({"min_size": "٣"}, {}, "Enter a whole number"),
    ({"start": "٠٨:00"}, {}, "Enter a valid time"),
    ({"start": "25:00"}, {}, "Enter a valid time"),
    ({"weekdays": []}, {}, "Pick at least one day"),
    ({"weekdays": ["7"]}, {}, "Select a valid choice"),
])
def test_bad_schedule_rows_get_clear_errors_and_nothing_is_saved(auto_pool, admin_user, client, settings, row,
                                                                  changes, words):
    settings.VMPORTAL_MAX_POOL_SIZE = 500
    client.force_login(admin_user)
    response = post_settings(client, auto_pool, {**WEEKDAYS_8_TO_18, **row}, **changes)
    assert response.status_code == 400
    assert words in response.content.decode()
    assert not PoolSchedule.objects.exists()
    auto_pool.refresh_from_db()
    assert (auto_pool.min_size, auto_pool.max_size) == (1, 20)  # the pool's own change waits too
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db
def test_lowering_the_largest_size_below_a_schedule_names_the_schedule(auto_pool, admin_user, client):
    entry = PoolSchedule.objects.create(pool=auto_pool, weekdays="01234", start=time(8), end=time(18), min_size=10)
    client.force_login(admin_user)
    row = {"id": entry.pk, **WEEKDAYS_8_TO_18}
    response = post_settings(client, auto_pool, row, initial=1, max_size=5)
    assert response.status_code == 400 and "At most the pool&#x27;s largest size (5)" in response.content.decode()
    auto_pool.refresh_from_db()
    assert auto_pool.max_size == 20


@pytest.mark.django_db
def test_django_admin_edits_schedules_with_the_same_checks_and_audit(ready_pool, client):
    client.force_login(User.objects.create_superuser("root", password="pw-root"))
    pool_folder(ready_pool)
    url = reverse("admin:pools_pool_change", args=[ready_pool.pk])
    inline = {"schedules-TOTAL_FORMS": 1, "schedules-INITIAL_FORMS": 0, "schedules-0-weekdays": ["5", "6"],
              "schedules-0-start": "09:00", "schedules-0-end": "12:00", "schedules-0-min_size": "4"}
    base = _pool_change(ready_pool, autosize="on", min_size="1", max_size="3")
    response = client.post(url, {**base, **inline})
    assert response.status_code == 200 and "At most the pool&#x27;s largest size (3)" in response.content.decode()
    assert not PoolSchedule.objects.exists()
    response = client.post(url, {**base, **inline, "max_size": "6"})
    assert response.status_code == 302, response.content.decode()[:3000]
    assert [str(e) for e in ready_pool.schedules.all()] == ["Sat-Sun 09:00-12:00 at least 4"]
    assert AuditEvent.objects.get(action="pool.schedule").actor_name == "root"


# ---------------------------------------------------------------- checkouts that found the pool empty


def ready_vms(pool, n):
    return [factories.vm(pool, state=VMState.READY, ready_at=timezone.now()) for _ in range(n)]


@pytest.mark.django_db
def test_checkouts_that_found_the_pool_empty_grow_it_once_per_person_and_minute(auto_pool, engineer, other_engineer,
                                                                               client, redis_conn, settings):
    settings.VMPORTAL_AUTOSIZE_HEADROOM = 0
    Pool.objects.filter(pk=auto_pool.pk).update(size=1)
    api = Client(headers={"X-AUTH-TOKEN": tokens.create_token(user=engineer, name="ci")[1]})
    for _ in range(5):  # a CI client retrying: one need of 3 VMs, not 15
        assert api.post("/api/v3/vm", {auto_pool.name: "3"}, content_type="application/json").status_code == 503
    # The web page's way: the miss, then an on-demand request for the same VM, is one need.
    client.force_login(other_engineer)
    assert client.post(reverse("checkout", args=[auto_pool.name])).status_code == 302
    assert AuditEvent.objects.filter(action="ondemand.request").count() == 1
    assert redis_conn.zcard(f"{autosize.EMPTY_KEY}{auto_pool.pk}") == 2
    reconcile_pool(auto_pool.pk)
    auto_pool.refresh_from_db()
    assert auto_pool.size == 1 + 3 + 1
    event = AuditEvent.objects.get(action="pool.autosize")
    assert "; 4 VMs asked of an empty pool;" in event.message
    # Counted since the last change only: the next reconcile keeps the size.
    reconcile_pool(auto_pool.pk)
    auto_pool.refresh_from_db()
    assert auto_pool.size == 5


@pytest.mark.django_db
def test_a_checkout_with_no_person_behind_it_counts_each_time(auto_pool, engineer, redis_conn):
    """A script's (or the bench's) checkouts are separate needs, and what another process
    (the pool manager, elsewhere) reads from Redis."""
    for _ in range(3):
        with pytest.raises(leases.PoolEmpty):
            leases.checkout(user=engineer, pools=[auto_pool] * 2)
    members = redis_conn.zrange(f"{autosize.EMPTY_KEY}{auto_pool.pk}", 0, -1, withscores=True)
    assert len(members) == 3 and all(abs(at - timezone.now().timestamp()) < 60 for _, at in members)
    assert 0 < redis_conn.ttl(f"{autosize.EMPTY_KEY}{auto_pool.pk}") <= 3600
    assert autosize.empty_demand(auto_pool.pk, since=timezone.now() - timedelta(minutes=5), now=timezone.now()) == 6
    assert autosize.empty_demand(auto_pool.pk, since=timezone.now(), now=timezone.now()) == 0


@pytest.mark.django_db
def test_with_redis_down_checkout_still_answers_pool_empty(auto_pool, engineer, monkeypatch, caplog):
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    monkeypatch.setattr(autosize, "redis_client", lambda: dead)
    with caplog.at_level(logging.INFO, logger="apps.pools.autosize"), pytest.raises(leases.PoolEmpty):
        leases.checkout(user=engineer, pools=[auto_pool])
    assert "not counted for automatic sizing" in caplog.text
    ready_vms(auto_pool, 1)
    assert len(leases.checkout(user=engineer, pools=[auto_pool])) == 1
    assert autosize.autosize_pool(auto_pool).size >= 1  # the manager sizes on without the misses


# ---------------------------------------------------------------- the 503's log level


def _request_records(caplog):
    return [(r.levelname, r.status_code) for r in caplog.records if r.name == "django.request"]


@pytest.mark.django_db
def test_a_pool_empty_503_is_a_warning_and_other_5xx_stay_errors(ready_pool, engineer, redis_conn, caplog):
    _, raw = tokens.create_token(user=engineer, name="test")
    api = Client(headers={"X-AUTH-TOKEN": raw})
    with caplog.at_level(logging.INFO, logger="django.request"):
        assert api.post(f"/api/v3/vm/{ready_pool.name}").status_code == 503  # no ready VM
        assert api.post("/api/v1/leases", {"pools": [ready_pool.name]},
                        content_type="application/json").status_code == 503
        Pool.objects.filter(pk=ready_pool.pk).update(enabled=False)
        assert api.post(f"/api/v3/vm/{ready_pool.name}").status_code == 503  # disabled: not an empty pool
    assert _request_records(caplog) == [("WARNING", 503), ("WARNING", 503), ("ERROR", 503)]


@pytest.mark.django_db
def test_a_500_after_a_pool_empty_answer_stays_an_error(caplog):
    marked = autosize._answered_empty.set(True)  # as a checkout of this request would
    request = HttpRequest()
    request.path = "/api/v3/vm/deb"
    try:
        with caplog.at_level(logging.INFO, logger="django.request"):
            log_response("Internal Server Error: %s", request.path, response=HttpResponse(status=500), request=request)
    finally:
        autosize._answered_empty.reset(marked)
    assert _request_records(caplog) == [("ERROR", 500)]
