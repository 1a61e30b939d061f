from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone

from apps.core.states import transition
from apps.pools.models import VM, Pool


class LeaseQuerySet(models.QuerySet):
    def active(self):
        return self.filter(ended_at__isnull=True)


class Lease(models.Model):
    class EndReason(models.TextChoices):
        RETURNED = "returned", "Returned"
        EXPIRED = "expired", "Expired"
        REVOKED = "revoked", "Revoked by an admin"

    # One-to-one: the database itself refuses a second lease of the same VM, ever.
    vm = models.OneToOneField(VM, on_delete=models.PROTECT, related_name="lease")
    pool = models.ForeignKey(Pool, on_delete=models.SET_NULL, null=True, related_name="leases")
    # Indexed by (user, ended_at), whose first column it is.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="leases",
                             db_index=False)
    started_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()  # indexed for active leases only (Meta.indexes)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=16, choices=EndReason.choices, blank=True)
    note = models.TextField(blank=True)
    tags = models.JSONField(default=dict, blank=True)

    objects = LeaseQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["user", "ended_at"]),
            # The API's lease pages walk active leases by id; ended leases (one per VM ever
            # made, kept) would otherwise be stepped over on every page.
            models.Index(fields=["id"], condition=models.Q(ended_at__isnull=True), name="lease_active_by_id"),
            # Expiry and its warnings look at active leases only; a lease given back leaves it.
            models.Index(fields=["expires_at"], condition=models.Q(ended_at__isnull=True), name="lease_active_expiry"),
        ]

    def __str__(self) -> str:
        return f"{self.vm} → {self.user}"

    @property
    def is_active(self) -> bool:
        return self.ended_at is None


class GroupLeaseLimit(models.Model):
    """A cap on the active leases all members of one group hold together (a team quota)."""

    group = models.OneToOneField(Group, on_delete=models.CASCADE, related_name="lease_limit")
    max_active_leases = models.PositiveIntegerField(
        help_text="Active leases the members of this group may hold together (admins are exempt)."
    )

    class Meta:
        verbose_name = "group lease limit"

    def __str__(self) -> str:
        return f"{self.group.name}: {self.max_active_leases}"


class OnDemandRequest(models.Model):
    """VMs cloned for one person because a pool had none ready: queued → cloning → booting → ready.

    All or nothing, like a checkout: the leases are created together when every VM is
    ready; if one cannot be made (after retries), the others are destroyed and the
    request fails with the reason.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        PROVISIONING = "provisioning", "Provisioning"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    # Every request ends ready, failed or cancelled; cancelling a ready one ends its leases.
    TRANSITIONS: dict[str, frozenset[str]] = {
        Status.QUEUED: frozenset({Status.PROVISIONING, Status.FAILED, Status.CANCELLED}),
        Status.PROVISIONING: frozenset({Status.READY, Status.FAILED, Status.CANCELLED}),
        Status.READY: frozenset(),
        Status.FAILED: frozenset(),
        Status.CANCELLED: frozenset(),
    }
    BADGE: dict[str, str] = {
        Status.QUEUED: "warn", Status.PROVISIONING: "warn", Status.READY: "ok", Status.FAILED: "bad",
        Status.CANCELLED: "",
    }

    # Public id, as vmpooler's request_id: clients may choose it; a duplicate is refused.
    request_id = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="ondemand_requests")
    wanted = models.JSONField(help_text='Pool name → VM count, e.g. {"debian-12": 2}.')
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    status_reason = models.TextField(blank=True)
    lifetime = models.DurationField(null=True, blank=True)
    note = models.TextField(blank=True)
    tags = models.JSONField(default=dict, blank=True)
    # vSphere task progress per VM id while its clone runs, as vCenter reports it.
    progress = models.JSONField(default=dict, blank=True)
    vms = models.ManyToManyField(VM, blank=True, related_name="ondemand_requests")
    retries = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "status"])]

    def __str__(self) -> str:
        return self.request_id

    @property
    def total(self) -> int:
        return sum(self.wanted.values())

    @property
    def is_pending(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.PROVISIONING)

    @property
    def badge(self) -> str:
        return self.BADGE[self.status]

    def move_to(self, new: str, **changes) -> None:
        transition(self, new, allowed=self.TRANSITIONS, field="status", **changes)


class VMTask(models.Model):
    """A change a lessee asked for on their VM: an extra disk, a snapshot, a revert, power off/on or reset.

    Run by the ``leases.vm_task`` job; the row is the record vmpooler's GET /vm shows
    (``disk``, ``snapshots``) and the place its failure reason is kept.
    """

    class Kind(models.TextChoices):
        DISK = "disk", "Add disk"
        SNAPSHOT = "snapshot", "Snapshot"
        REVERT = "revert", "Revert to snapshot"
        POWER_OFF = "power_off", "Power off"
        POWER_ON = "power_on", "Power on"
        RESET = "reset", "Reset"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    # One outcome each: the job records it, or the runner's hooks when the job did not finish.
    TRANSITIONS: dict[str, frozenset[str]] = {
        Status.QUEUED: frozenset({Status.DONE, Status.FAILED}),
        Status.DONE: frozenset(),
        Status.FAILED: frozenset(),
    }
    BADGE: dict[str, str] = {Status.QUEUED: "warn", Status.DONE: "ok", Status.FAILED: "bad"}

    lease = models.ForeignKey(Lease, on_delete=models.CASCADE, related_name="vm_tasks")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    disk_gb = models.PositiveIntegerField(null=True, blank=True)
    snapshot = models.CharField(max_length=64, blank=True, help_text="The snapshot's id (its name in vSphere).")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on {self.lease.vm}"

    @property
    def badge(self) -> str:
        return self.BADGE[self.status]

    def move_to(self, new: str, **changes: Any) -> None:
        transition(self, new, allowed=self.TRANSITIONS, field="status", **changes)
