"""Creating, finding and revoking API tokens: used alike by the token page and /api/v3/token."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from apps.api.models import ApiToken
from apps.audit import services as audit
from apps.core.errors import NotFound, VmPortalError
from apps.core.permissions import is_admin

# last_used_at is written at most this often per token, so busy CI does not turn every
# request into a row update.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@transaction.atomic
def create_token(*, user: AbstractBaseUser, name: str, lifetime: timedelta | None = None) -> tuple[ApiToken, str]:
    """A new token and its clear text, which is returned here once and never stored."""
    name = (name or "").strip()[:80] or "api"
    days = settings.VMPORTAL_API_TOKEN_LIFETIME_DAYS
    lifetime = lifetime if lifetime is not None else (timedelta(days=days) if days else None)
    if lifetime is not None and lifetime <= timedelta(0):
        raise VmPortalError("A token's lifetime must be positive.")
    raw = secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name, token_hash=hash_token(raw), prefix=raw[:8],
        expires_at=timezone.now() + lifetime if lifetime else None,
    )
    expires = token.expires_at.isoformat() if token.expires_at else None
    audit.record("api.token.create", target=token,
                 after={"name": name, "prefix": token.prefix, "expires_at": expires})
    return token, raw


def authenticate(raw: str) -> ApiToken | None:
    """The usable token with this clear text, or None (unknown, revoked, expired)."""
    if not raw or len(raw) > 256:
        return None
    token = ApiToken.objects.usable().select_related("user").filter(token_hash=hash_token(raw)).first()
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def find_token(raw: str) -> ApiToken:
    """A token by clear text, usable or not (for revoking); NotFound when unknown."""
    token = ApiToken.objects.select_related("user").filter(token_hash=hash_token(raw or "")).first()
    if token is None:
        raise NotFound("No such token.")
    return token


@transaction.atomic
def revoke_token(*, user: AbstractBaseUser, token: ApiToken) -> None:
    if token.user_id != user.pk and not is_admin(user):
        # Same answer as for an unknown token: other people's tokens are not to be probed.
        raise NotFound("No such token.")
    changed = ApiToken.objects.filter(pk=token.pk, revoked=False).update(revoked=True)
    if changed:
        audit.record("api.token.revoke", target=token, before={"revoked": False}, after={"revoked": True})
