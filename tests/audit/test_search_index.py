"""Audit reads at a million rows: search through its trigram index, keyset pages and the CSV
export that start at an index position, never by reading every newer row."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.audit import selectors
from apps.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def insert(at, n: int, **kw) -> None:
    """Events at one instant (auto_now_add would give each its own), to test ties in `at`."""
    with connection.cursor() as cursor:
        for i in range(n):
            cursor.execute(
                "INSERT INTO audit_auditevent (at, actor_name, action, target_type, target_id, target_repr, message,"
                " request_id) VALUES (%s, %s, %s, '', '', %s, %s, %s)",
                [at, kw.get("actor_name", "system"), kw.get("action", "vm.destroy"), f"vm-{i}",
                 kw.get("message", ""), kw.get("request_id", "")])


def plan(events, *, ordered_scans: bool = True) -> str:
    with connection.cursor() as cursor:
        # A test table is tiny: a sequential scan, or walking the `at` index and filtering,
        # would win whatever other indexes exist.
        cursor.execute("SET LOCAL enable_seqscan = off")
        if not ordered_scans:
            cursor.execute("SET LOCAL enable_indexscan = off")
    return events.explain()


def test_search_matches_every_field_case_insensitively_through_the_trigram_index():
    now = timezone.now()
    insert(now, 1, actor_name="Alice", action="pool.reconfigure", message="size 4 to 9")
    insert(now, 1, actor_name="bob", action="lease.checkout", request_id="req-7f3a9c")
    insert(now, 2, actor_name="system", action="vm.destroy", message="clone of deb took 42 s")

    def found(q):
        return len(selectors.filter_audit(q=q))

    assert found("alice") == 1
    assert found("RECONFIG") == 1
    assert found("took 42") == 2
    assert found("vm-1") == 1
    assert found("req-7f3a9c") == 1
    assert found("nothing like it") == 0
    assert found("50%_") == 0  # LIKE's wildcards are searched for, not obeyed
    assert "audit_search_trgm" in plan(selectors.filter_audit(q="took 42"), ordered_scans=False)


def test_keyset_page_starts_its_index_scan_at_the_cursor():
    now = timezone.now()
    insert(now - timedelta(minutes=1), 3)
    insert(now, 3)
    events = selectors.filter_audit()
    cursor = selectors.audit_page(events, size=4).next_cursor
    text = plan(selectors.after_cursor(events, cursor)[:4])
    assert "Index Cond" in text and "at <=" in text, text


def test_export_chunks_cover_every_row_once_in_order_across_ties():
    now = timezone.now()
    insert(now - timedelta(minutes=1), 4)
    insert(now, 7)  # ties in `at` across chunk boundaries
    insert(now + timedelta(minutes=1), 2)
    rows = [e.pk for e in selectors.iter_events(selectors.filter_audit(), chunk_size=3)]
    assert rows == list(AuditEvent.objects.order_by("-at", "-id").values_list("pk", flat=True))
    assert len(rows) == 13


def test_export_chunks_grow_from_a_small_first_one_and_still_cover_every_row_once():
    now = timezone.now()
    insert(now - timedelta(minutes=1), 9)
    insert(now, 12)  # ties in `at` across the growing chunks (2, 4, 8, 8)
    with CaptureQueriesContext(connection) as ctx:
        rows = [e.pk for e in selectors.iter_events(selectors.filter_audit(), chunk_size=8, first=2)]
    assert rows == list(AuditEvent.objects.order_by("-at", "-id").values_list("pk", flat=True))
    limits = [int(q["sql"].rsplit("LIMIT ", 1)[1]) for q in ctx.captured_queries]
    assert limits == [3, 5, 9, 9]  # each chunk asks for one row more, to know whether more follow
