"""API tokens: what CI systems present instead of a password.

Only a SHA-256 of the token is stored, so a database dump holds nothing that
authenticates. A token is random (256 bits), which is why a fast unsalted hash is enough.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class ApiTokenQuerySet(models.QuerySet):
    def usable(self):
        return self.filter(revoked=False).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=80)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    # The first characters of the token, to tell tokens apart in lists; not enough to use one.
    prefix = models.CharField(max_length=8, editable=False)
    created = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked = models.BooleanField(default=False)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…) of {self.user}"

    @property
    def is_usable(self) -> bool:
        return not self.revoked and (self.expires_at is None or self.expires_at > timezone.now())


class PoolOverride(models.Model):
    """A pool setting changed through vmpooler's /config API, and what it was before.

    vmpooler keeps API changes as overrides of its YAML config that DELETE
    /config/poolsize/<pool> (and pooltemplate) undo; this row is that memory. The first
    override keeps the original value; later ones only change the pool again.
    """

    class Field(models.TextChoices):
        SIZE = "size", "Size"
        TEMPLATE = "template", "Template"

    pool = models.ForeignKey("pools.Pool", on_delete=models.CASCADE, related_name="api_overrides")
    field = models.CharField(max_length=16, choices=Field.choices)
    original = models.JSONField(help_text="The value before the first API override (a size, or a template name).")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["pool", "field"], name="pooloverride_unique_field")]

    def __str__(self) -> str:
        return f"{self.pool} {self.field} (was {self.original})"
