from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class StateChange(models.Model):
    """One row per status change made by transition(): what moved, from where to where, why,
    and who (a person, or the job whose id is given).

    Written in the same statement as the change itself (see apps.core.states), so a change
    without its row, or a row without its change, cannot exist.
    """

    at = models.DateTimeField(default=timezone.now)
    model = models.CharField(max_length=64, help_text="app_label.model, e.g. pools.template")
    object_id = models.BigIntegerField()
    field = models.CharField(max_length=32)
    old = models.CharField("from", max_length=16)
    new = models.CharField("to", max_length=16)
    reason = models.TextField(blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.DO_NOTHING, db_constraint=False,
        null=True, blank=True, related_name="+", db_index=False,  # no constraint to check, never read by it
    )
    actor_name = models.CharField(max_length=150, help_text='Username, or "system" for jobs.')
    job_id = models.BigIntegerField(null=True, blank=True, help_text="The job that made the change, if one did.")
    request_id = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["at", "id"]
        # The only read is "the history of this object"; one index keeps the hot-path insert cheap.
        indexes = [models.Index(fields=["model", "object_id"], name="statechange_object")]

    def __str__(self) -> str:
        return f"{self.model} {self.object_id} {self.field}: {self.old} → {self.new}"
