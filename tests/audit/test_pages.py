"""Audit log page: filters, keyset pagination (no COUNT), CSV export, detail diff."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.audit import selectors
from apps.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def events(n, **kw):
    return AuditEvent.objects.bulk_create(
        [AuditEvent(actor_name=kw.get("actor_name", "system"), action=kw.get("action", "vm.destroy"),
                    target_repr=f"vm-{i}", pool_id=kw.get("pool_id"), message=kw.get("message", ""))
         for i in range(n)]
    )


def test_keyset_pages_cover_every_row_once_in_order():
    events(23)
    seen, cursor = [], ""
    while True:
        page = selectors.audit_page(selectors.filter_audit(), after=cursor, size=5)
        seen += [e.pk for e in page.events]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    expected = list(AuditEvent.objects.order_by("-at", "-id").values_list("pk", flat=True))
    assert seen == expected and len(seen) == 23


def test_page_never_counts_or_offsets(client, admin_user):
    events(60)
    client.force_login(admin_user)
    with CaptureQueriesContext(connection) as ctx:
        first = client.get(reverse("adminui:audit"))
    sql = " ".join(q["sql"] for q in ctx.captured_queries if "audit_auditevent" in q["sql"])
    assert "COUNT(" not in sql.upper() and "OFFSET" not in sql.upper()
    cursor = first.context["page"].next_cursor
    assert cursor and len(first.context["page"].events) == 50
    second = client.get(reverse("adminui:audit"), {"after": cursor})
    assert len(second.context["page"].events) == 10
    assert second.context["page"].next_cursor is None


def test_bad_cursor_is_ignored_not_500(client, admin_user):
    events(3)
    client.force_login(admin_user)
    response = client.get(reverse("adminui:audit"), {"after": "not-a-cursor!!"})
    assert response.status_code == 200
    assert len(response.context["page"].events) == 3


def test_filters_by_actor_action_pool_date_and_search(client, admin_user, ready_pool):
    events(3, actor_name="alice", action="pool.reconfigure", pool_id=ready_pool.pk, message="size 4 to 9")
    events(2, actor_name="bob", action="lease.checkout")
    events(1, actor_name="system", action="pool.reset")
    client.force_login(admin_user)

    def count(**params):
        response = client.get(reverse("adminui:audit"), params)
        assert response.status_code == 200
        return len(response.context["page"].events)

    assert count(actor="alice") == 3
    assert count(action="pool.") == 4
    assert count(action="lease.checkout") == 2
    assert count(pool=ready_pool.pk) == 3
    assert count(q="9") == 3
    today = timezone.localdate()
    assert count(since=today.isoformat(), until=today.isoformat()) == 6
    assert count(until=(today - timedelta(days=1)).isoformat()) == 0


def test_bad_filter_input_rerenders_with_a_message(client, admin_user):
    client.force_login(admin_user)
    response = client.get(reverse("adminui:audit"), {"since": "2026-05-02", "until": "2026-05-01"})
    assert response.status_code == 400
    assert b"The start date is after the end date." in response.content
    response = client.get(reverse("adminui:audit"), {"since": "yesterday-ish", "pool": "999999"})
    assert response.status_code == 400
    assert b"field-error" in response.content


def test_csv_export_streams_the_filtered_set(client, admin_user):
    events(4, actor_name="alice", action="pool.reconfigure")
    events(3, actor_name="bob")
    AuditEvent.objects.create(actor_name="alice", action="pool.reset", before={"health": "failing"},
                              after={"health": "ok"}, message='comma, "quote"')
    client.force_login(admin_user)
    response = client.get(reverse("adminui:audit-export"), {"actor": "alice"})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:3] == ["at", "actor", "action"]
    assert len(rows) == 1 + 5
    assert {r[1] for r in rows[1:]} == {"alice"}
    reset = next(r for r in rows if r[2] == "pool.reset")
    assert reset[8] == 'comma, "quote"' and reset[9] == '{"health": "failing"}'


def test_detail_shows_the_before_after_diff(client, admin_user):
    event = AuditEvent.objects.create(actor_name="alice", action="pool.reconfigure",
                                      before={"size": 2, "enabled": True}, after={"size": 5, "enabled": True})
    client.force_login(admin_user)
    response = client.get(reverse("adminui:audit-detail", args=[event.pk]))
    diff = {row.key: row for row in response.context["diff"]}
    assert diff["size"].changed and (diff["size"].before, diff["size"].after) == (2, 5)
    assert not diff["enabled"].changed
    assert b'class="changed"' in response.content


def test_htmx_poll_gets_only_rows(client, admin_user):
    events(2)
    client.force_login(admin_user)
    response = client.get(reverse("adminui:audit"), HTTP_HX_REQUEST="true")
    assert b"<html" not in response.content and b"vm-1" in response.content
