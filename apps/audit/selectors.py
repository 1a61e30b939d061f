"""Read side of the audit log pages: search, keyset pages, one event's diff."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet
from django.utils.dateparse import parse_datetime

from apps.audit.models import AuditEvent


def filter_audit(*, actor: str = "", action: str = "", pool_id: int | None = None,
                 since: datetime | None = None, until: datetime | None = None, q: str = "") -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.all()
    if actor:
        events = events.filter(actor_name=actor)
    if action:
        # "pool." finds every pool action; a full name finds just that one.
        events = events.filter(action__startswith=action)
    if pool_id is not None:
        events = events.filter(pool_id=pool_id)
    if since is not None:
        events = events.filter(at__gte=since)
    if until is not None:
        events = events.filter(at__lt=until)
    if q:
        events = events.filter(
            Q(target_repr__icontains=q) | Q(message__icontains=q) | Q(action__icontains=q)
            | Q(actor_name__icontains=q) | Q(request_id=q)
        )
    return events.order_by("-at", "-id")


def encode_cursor(event: AuditEvent) -> str:
    raw = f"{event.at.isoformat()}|{event.pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int] | None:
    """(at, id) of the last row seen, or None for a cursor that is not ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at_text, id_text = raw.rsplit("|", 1)
        at = parse_datetime(at_text)
        return (at, int(id_text)) if at is not None else None
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


@dataclass
class Page:
    events: list[AuditEvent]
    next_cursor: str | None


def audit_page(events: QuerySet[AuditEvent], *, after: str = "", size: int = 50) -> Page:
    """One page, newest first, after the cursor (keyset: an index range scan, never OFFSET or COUNT)."""
    position = decode_cursor(after) if after else None
    if position is not None:
        at, pk = position
        events = events.filter(Q(at__lt=at) | Q(at=at, pk__lt=pk))
    rows = list(events[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return Page(events=rows, next_cursor=encode_cursor(rows[-1]) if more and rows else None)


@dataclass
class DiffRow:
    key: str
    before: Any
    after: Any

    @property
    def changed(self) -> bool:
        return self.before != self.after


def audit_diff(event: AuditEvent) -> list[DiffRow]:
    before = event.before if isinstance(event.before, dict) else {}
    after = event.after if isinstance(event.after, dict) else {}
    keys = list(dict.fromkeys([*before, *after]))
    return [DiffRow(key=k, before=before.get(k), after=after.get(k)) for k in keys]
