from __future__ import annotations

from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    """Append-only record of every action by people and by jobs.

    The database refuses UPDATE, DELETE and TRUNCATE on this table (migrations 0002, 0003),
    so not even a bug or a shell session can rewrite history.
    """

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.DO_NOTHING, db_constraint=False,
        null=True, blank=True, related_name="+", db_index=False,  # no constraint to check; read by name
    )
    actor_name = models.CharField(max_length=150, help_text='Username, or "system" for jobs.')
    action = models.CharField(max_length=64, help_text="e.g. lease.checkout")
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_repr = models.CharField(max_length=255, blank=True)
    pool = models.ForeignKey(
        "pools.Pool", on_delete=models.DO_NOTHING, db_constraint=False,
        null=True, blank=True, related_name="+", db_index=False,  # indexed by (pool, -at)
    )
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    message = models.TextField(blank=True)
    request_id = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["actor_name", "-at"]),
            models.Index(fields=["pool", "-at"]),
            # The audit list sorted by action or target: a value, then newest first in it.
            models.Index(fields=["action", "-at", "-id"], name="audit_action_at"),
            models.Index(fields=["target_repr", "-at", "-id"], name="audit_target_at"),
            # The filter by action prefix ("lease." for every lease action), whatever the
            # database's collation; equality uses audit_action_at.
            models.Index(fields=["action"], opclasses=["varchar_pattern_ops"], name="audit_action_prefix"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.target_repr}"
