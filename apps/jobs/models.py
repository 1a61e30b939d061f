from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import models

from apps.core.states import transition


class Job(models.Model):
    """One row per RQ job: what it was asked to do, how it went, and its log lines."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    # A Job row is itself the history of its run (times, error, log), so its moves write no
    # StateChange row: the map still guards them, in one plain conditional UPDATE each.
    TRANSITIONS: dict[str, frozenset[str]] = {
        Status.QUEUED: frozenset({Status.RUNNING}),
        Status.RUNNING: frozenset({Status.SUCCEEDED, Status.FAILED}),
        Status.SUCCEEDED: frozenset(),
        Status.FAILED: frozenset(),
    }
    BADGE: dict[str, str] = {
        Status.QUEUED: "", Status.RUNNING: "warn", Status.SUCCEEDED: "ok", Status.FAILED: "bad",
    }

    kind = models.CharField(max_length=64, db_index=True, help_text="e.g. clone, destroy, reconcile")
    queue = models.CharField(max_length=32, default="default")
    args = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    rq_id = models.CharField(max_length=64, blank=True)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    attempt = models.PositiveSmallIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The runner touches this while the job runs; a stale one means its worker died.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    log = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk}"

    @property
    def badge(self) -> str:
        return self.BADGE[self.status]

    def move_to(self, new: str, *, where: dict[str, Any] | None = None, **changes: Any) -> None:
        transition(self, new, allowed=self.TRANSITIONS, field="status", history=False, where=where, **changes)

    def is_alive(self, now: datetime, stale_after: timedelta) -> bool:
        """Queued (a worker will take it), or running with a heartbeat newer than ``stale_after``."""
        last = self.heartbeat_at or self.started_at or self.created_at
        return self.status == self.Status.QUEUED or now - last < stale_after
