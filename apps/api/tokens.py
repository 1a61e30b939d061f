"""Creating, finding and revoking API tokens: used alike by the token page and /api/v3/token."""

from __future__ import annotations

import hashlib
import secrets
from contextlib import nullcontext
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from apps.api.models import ApiToken
from apps.audit import services as audit
from apps.core.errors import NotFound, VmPortalError
from apps.core.permissions import is_admin
from apps.core.rows import load as load_row
from apps.core.rows import width

# last_used_at is written at most this often per token, so busy CI does not turn every
# request into a row update.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@transaction.atomic
def create_token(*, user: User, name: str, lifetime: timedelta | None = None) -> tuple[ApiToken, str]:
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


@cache
def _user_model() -> type[User]:
    model = ApiToken._meta.get_field("user").related_model
    if not (isinstance(model, type) and issubclass(model, User)):
        raise TypeError(f"API tokens belong to the auth User; AUTH_USER_MODEL is {model}.")
    return model


@cache
def _lookup() -> str:
    """The token and its user in one indexed query (token_hash is unique), as SQL: the ORM's
    select_related form cost more in Python than the query did in PostgreSQL."""
    user_model = _user_model()
    t, u = ApiToken._meta.db_table, user_model._meta.db_table
    selected = ", ".join([*(f"t.{f.column}" for f in ApiToken._meta.concrete_fields),
                         *(f"u.{f.column}" for f in user_model._meta.concrete_fields)])
    # Only table and column names from the models are formatted in; values are parameters.
    return f"""SELECT {selected} FROM {t} t JOIN {u} u ON u.id = t.user_id
        WHERE t.token_hash = %s AND NOT t.revoked AND (t.expires_at IS NULL OR t.expires_at > %s)
          AND u.is_active"""  # noqa: S608


def authenticate(raw: str) -> ApiToken | None:
    """The usable token with this clear text, or None (unknown, revoked, expired, or its
    user deactivated). Read from the database on every request: revoking takes effect at once."""
    return authenticate_along(raw)[0]


def authenticate_along(raw: str, along: tuple[str, list] | None = None) -> tuple[ApiToken | None, list[tuple]]:
    """authenticate(), and the rows of ``along`` (a read-only query and its parameters),
    sent with the token lookup in one round trip on PostgreSQL: what a call needs next
    (checkout's pools) costs no wait of its own. Its rows are read whether or not the
    token is good; the caller answers 401 before it uses them."""
    if not raw or len(raw) > 256:
        return None, []
    now = timezone.now()
    row, rows = _first_query(_lookup(), [hash_token(raw), now], along)
    return _token_from(row, now), rows


def _token_from(row: tuple | None, now: datetime) -> ApiToken | None:
    if row is None:
        return None
    token = load_row(ApiToken, row)
    token.user = load_row(_user_model(), row[width(ApiToken):])
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def _first_query(sql: str, params: list, along: tuple[str, list] | None) -> tuple[tuple | None, list[tuple]]:
    """Run the token lookup (and ``along``), which doubles as Django's connection health check.

    With CONN_HEALTH_CHECKS, the first query of a request on a kept connection is preceded
    by a SELECT 1 of its own: a round trip on every API call. A token call's first query is
    this read, so it is the check: a connection that died while idle (PostgreSQL restarted,
    an idle timeout) fails it, is closed, and the read runs once more on a new connection,
    as the health check would have done. Only outside a transaction: a read-only statement
    in autocommit can be repeated; inside an atomic block the usual check runs.
    """
    db: Any = connection  # the stubs lack the health-check attributes
    checking = (db.connection is not None and db.health_check_enabled and not db.health_check_done
                and not db.in_atomic_block)
    if checking:
        db.health_check_done = True
    try:
        return _reads(sql, params, along)
    except (OperationalError, InterfaceError):
        if not checking or connection.is_usable():
            raise  # not a dead connection: the statement itself failed
        connection.close()
    return _reads(sql, params, along)


def _reads(sql: str, params: list, along: tuple[str, list] | None) -> tuple[tuple | None, list[tuple]]:
    if along is None:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone(), []
    pipelined = connection.vendor == "postgresql"
    if pipelined:
        connection.ensure_connection()
    # A pipeline's errors surface raw from psycopg: wrapped as Django's, as a cursor would.
    with (connection.wrap_database_errors, connection.connection.pipeline() if pipelined else nullcontext(),
          connection.cursor() as first, connection.cursor() as second):
        first.execute(sql, params)
        second.execute(*along)
        return first.fetchone(), second.fetchall()


def find_token(raw: str) -> ApiToken:
    """A token by clear text, usable or not (for revoking); NotFound when unknown."""
    token = ApiToken.objects.select_related("user").filter(token_hash=hash_token(raw or "")).first()
    if token is None:
        raise NotFound("No such token.")
    return token


@transaction.atomic
def revoke_token(*, user: User, token: ApiToken) -> None:
    if token.user_id != user.pk and not is_admin(user):
        # Same answer as for an unknown token: other people's tokens are not to be probed.
        raise NotFound("No such token.")
    changed = ApiToken.objects.filter(pk=token.pk, revoked=False).update(revoked=True)
    if changed:
        audit.record("api.token.revoke", target=token, before={"revoked": False}, after={"revoked": True})
