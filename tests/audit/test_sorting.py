"""Audit log (issue 17): sorted by time, actor, action or target, server-side, in keyset pages
that each start an index scan where the last one stopped; and what an event shows: targets
and pools as links by name, before/after values as a person reads them."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from apps.audit import selectors
from apps.audit.models import AuditEvent
from tests.audit.test_search_index import insert

pytestmark = pytest.mark.django_db

ORDERS = {
    "at": ("at", "id"), "-at": ("-at", "-id"),
    "actor": ("actor_name", "-at", "-id"), "-actor": ("-actor_name", "at", "id"),
    "action": ("action", "-at", "-id"), "-action": ("-action", "at", "id"),
    "target": ("target_repr", "-at", "-id"), "-target": ("-target_repr", "at", "id"),
}


def plan(events) -> str:
    """The plan with full sorts and sequential scans priced out: a plan with neither exists only
    when an index gives the rows in the page's order (a test table is too small to tell). An
    incremental sort may remain: ids of events at the very same microsecond, a few rows."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
    return events.explain()


def full_sort(text: str) -> bool:
    return re.search(r"(^|->  )Sort  \(", text, re.MULTILINE) is not None


@pytest.fixture
def mixed():
    """Few distinct values, many rows each, and ties in time: every cursor case."""
    now = timezone.now()
    for minute, actor, action in [(3, "alice", "pool.reconfigure"), (2, "bob", "lease.checkout"),
                                  (1, "alice", "lease.checkout"), (0, "system", "vm.destroy")]:
        insert(now - timedelta(minutes=minute), 4, actor_name=actor, action=action)
    insert(now, 3, actor_name="bob", action="vm.destroy")  # same instant as the last four


@pytest.mark.parametrize("sort", list(ORDERS))
def test_keyset_pages_in_every_sort_cover_every_row_once_in_order(mixed, sort):
    seen, cursor = [], ""
    for _ in range(20):
        page = selectors.audit_page(selectors.filter_audit(), after=cursor, size=3, sort=sort)
        seen += [e.pk for e in page.events]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seen == list(AuditEvent.objects.order_by(*ORDERS[sort]).values_list("pk", flat=True))
    assert len(seen) == 19


@pytest.mark.parametrize("few", [20_000, 3])  # the filter's events sorted, or read in the column's index
@pytest.mark.parametrize("sort", ["action", "-action", "target", "-target", "actor"])
def test_a_filtered_column_sort_pages_through_the_filters_events_in_order(mixed, monkeypatch, few, sort):
    monkeypatch.setattr(selectors, "FEW", few)
    seen, cursor = [], ""
    for _ in range(20):
        page = selectors.audit_page(selectors.filter_audit(actor="bob"), after=cursor, size=2, sort=sort)
        seen += [e.pk for e in page.events]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seen == list(AuditEvent.objects.filter(actor_name="bob").order_by(*ORDERS[sort])
                        .values_list("pk", flat=True))
    assert len(seen) == 7


def test_a_filter_that_keeps_few_events_is_sorted_from_its_own_index_not_read_in_the_columns(mixed, monkeypatch):
    """bench/pages.py, 1M events: an actor with 12 of them sorted by action read most of the
    action index (0.57 s); one with 3,334, all on the last target, sorted by -target 0.74 s."""
    events = selectors.filter_audit(actor="bob").order_by(*ORDERS["action"])
    action_index = re.compile(r"using audit_\w*action\w*")  # audit_action_at, or the plain one
    few = plan(selectors._ordered_for_filter(events, ORDERS["action"])[:3])
    assert not action_index.search(few) and "actor_n" in few, few
    monkeypatch.setattr(selectors, "FEW", 6)  # bob has 7: common enough for the column's index
    many = plan(selectors._ordered_for_filter(events, ORDERS["action"])[:3])
    assert action_index.search(many), many


def test_a_sort_keeps_the_filters(mixed):
    page = selectors.audit_page(selectors.filter_audit(actor="bob"), size=50, sort="-action")
    shown = [(e.actor_name, e.action) for e in page.events]
    assert shown == [("bob", "vm.destroy")] * 3 + [("bob", "lease.checkout")] * 4


@pytest.mark.parametrize("sort", ["action", "-action", "target", "actor", "-at"])
def test_a_sorted_page_deep_in_a_value_is_an_index_range_scan_not_a_sort(mixed, sort):
    events = selectors.filter_audit()
    first = selectors.audit_page(events, size=2, sort=sort)
    field = selectors.SORT_FIELDS[sort.removeprefix("-")]
    ordered = events.order_by(*ORDERS[sort])
    if field == "at":
        position = selectors.decode_cursor(first.next_cursor)
        text = plan(selectors._older(ordered, *position)[:3])
        assert "Index Cond" in text and "at <=" in text, text
        return
    value, at, pk = selectors.decode_column_cursor(first.next_cursor)
    same = ordered.filter(**{field: value})
    for query in (same.filter(at__lte=at)[:3], ordered.filter(**{f"{field}__gt": value})[:3]):
        text = plan(query)
        assert "Index Cond" in text and not full_sort(text), text


def test_a_cursor_of_another_sort_or_garbage_starts_again_not_a_500(client, admin_user, mixed):
    client.force_login(admin_user)
    by_time = selectors.audit_page(selectors.filter_audit(), size=3).next_cursor
    for sort, after in [("action", by_time), ("action", "bm90IGpzb24"), ("-target", "WzEsMiwzXQ"),
                        ("action", "WyJ4IiwgIm5vdCBhIGRhdGUiLCAxXQ"), ("nonsense", "!!")]:
        response = client.get(reverse("adminui:audit"), {"sort": sort, "after": after})
        assert response.status_code == 200, (sort, after)
        assert len(response.context["page"].events) == 19


def test_column_headers_sort_keep_the_filters_and_say_which_way(client, admin_user, mixed):
    client.force_login(admin_user)
    response = client.get(reverse("adminui:audit"), {"actor": "bob", "sort": "action", "after": "x"})
    columns = response.context["columns"]
    assert columns["action"].aria_sort == "ascending" and columns["at"].aria_sort == "none"
    action = parse_qs(urlsplit(columns["action"].href).query)
    assert action == {"actor": ["bob"], "sort": ["-action"]}  # turns around, keeps the filter, page one
    assert parse_qs(urlsplit(columns["at"].href).query)["sort"] == ["-at"]  # time starts newest first
    assert parse_qs(urlsplit(columns["target"].href).query)["sort"] == ["target"]
    page = response.content.decode()
    assert 'aria-sort="ascending"' in page
    # The poll and the pager ask for the same sort; the filter form sends it again.
    assert 'hx-get="/manage/audit/?actor=bob&amp;sort=action"' not in page  # not the first page
    assert '<input type="hidden" name="sort" value="action">' in page
    first = client.get(reverse("adminui:audit"), {"sort": "-target"}).content.decode()
    assert 'hx-get="/manage/audit/?sort=-target"' in first


def test_engineers_still_get_no_audit_log(client, engineer):
    client.force_login(engineer)
    assert client.get(reverse("adminui:audit"), {"sort": "actor"}).status_code == 403


def test_targets_and_pools_are_links_by_name(client, admin_user, ready_pool):
    from apps.audit.services import record

    record("pool.reset", target=ready_pool, pool=ready_pool)
    record("template.ready", target=ready_pool.template)
    record("vm.destroy", message="a VM by a name only")
    client.force_login(admin_user)
    rows = client.get(reverse("adminui:audit")).content.decode()
    assert f'<a href="/manage/pools/{ready_pool.pk}/">{ready_pool}</a>' in rows
    assert f'<a href="/manage/templates/{ready_pool.template_id}/">{ready_pool.template}</a>' in rows
    event = AuditEvent.objects.get(action="pool.reset")
    detail = client.get(reverse("adminui:audit-detail", args=[event.pk])).content.decode()
    assert f'<a href="/manage/pools/{ready_pool.pk}/">{ready_pool.name}</a>' in detail
    assert f"/manage/audit/?pool={ready_pool.pk}" in detail
    assert f">#{ready_pool.pk}<" not in detail


def test_an_admin_who_is_staff_gets_the_django_admin_page_of_other_targets(admin_user):
    from apps.audit.views import target_url

    assert target_url("pools.vm", "12", staff=True) == "/admin/pools/vm/12/change/"
    assert target_url("pools.vm", "12", staff=False) == ""
    assert target_url("pools.vm", "not-a-number", staff=True) == ""
    assert target_url("nothing.here", "1", staff=True) == ""
    assert target_url("leases.lease", "7", staff=False) == "/leases/7/"


def test_a_deleted_pool_shows_its_id_and_says_so(client, admin_user):
    event = AuditEvent.objects.create(actor_name="alice", action="pool.create", pool_id=987654)
    client.force_login(admin_user)
    detail = client.get(reverse("adminui:audit-detail", args=[event.pk])).content.decode()
    assert "#987654 <span class=\"muted\">(deleted)</span>" in detail


def test_before_and_after_read_as_words_not_python(client, admin_user, ready_pool):
    from apps.pools import reconfigure

    template = ready_pool.template
    event = AuditEvent.objects.create(
        actor_name="alice", action="pool.reconfigure", pool_id=ready_pool.pk,
        before={"template": {"id": template.pk, "name": template.name}, "lease_max_lifetime": "4166 days, 15:00:00",
                "boot_timeout": "0:10:00", "enabled": True, "aliases": ["a", "b"], "cpus": None},
        after={"template": {"id": template.pk, "name": template.name}, "lease_max_lifetime": "1 day, 2:30:00",
               "boot_timeout": "0:00:45", "enabled": False, "aliases": [], "cpus": 4},
    )
    client.force_login(admin_user)
    page = client.get(reverse("adminui:audit-detail", args=[event.pk])).content.decode()
    assert "{&#x27;id&#x27;" not in page and "days, " not in page
    assert f'<a href="/manage/templates/{template.pk}/">{template.name}</a>' in page
    for shown in ("4166 days 15 h", "1 day 2 h 30 min", "10 min", "45 s", "yes", "no", "a, b", "(none)", ">4<"):
        assert shown in page, shown
    # The stored values stay as they were written (the CSV export and the API read them).
    assert reconfigure.snapshot(ready_pool)["lease_lifetime"] == str(ready_pool.lease_lifetime)


def test_the_time_column_stays_on_one_line(client, admin_user, mixed):
    client.force_login(admin_user)
    page = client.get(reverse("adminui:audit")).content.decode()
    assert '<td class="when">' in page
    css = client.get("/static/vmportal/app.css")
    assert b".audit td.when { white-space: nowrap; }" in b"".join(css.streaming_content)


def test_a_drain_is_logged_as_a_drain_and_a_new_pool_says_what_it_will_do(ready_pool):
    from apps.pools import reconfigure
    from apps.pools.models import Pool
    from tests.pools.test_pool_admin import pool_folder

    reconfigure.drain(pool_id=ready_pool.pk)
    drain = AuditEvent.objects.get(pool_id=ready_pool.pk)
    assert drain.action == "pool.drain"
    assert drain.after == {"size": 0} and drain.message.startswith("Drained: ")
    assert not AuditEvent.objects.filter(action="pool.reconfigure").exists()

    new = Pool(name="fresh", template=ready_pool.template, cluster=ready_pool.cluster,
               folder=pool_folder(ready_pool), size=2)
    reconfigure.create_pool(pool=new)
    created = AuditEvent.objects.get(action="pool.create")
    assert created.message == f"Created with size 2: clone 2 from {ready_pool.template} on {ready_pool.cluster}."
