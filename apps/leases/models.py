from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone

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
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="leases")
    started_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=16, choices=EndReason.choices, blank=True)
    note = models.TextField(blank=True)
    tags = models.JSONField(default=dict, blank=True)

    objects = LeaseQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["user", "ended_at"])]

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
