"""Creating, finding and revoking API tokens: used alike by the token page and /api/v3/token."""

from __future__ import annotations

import hashlib
import secrets
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
def _lookup(joined_columns: str = "", join: str = "") -> str:
    """The token and its user in one indexed query (token_hash is unique), as SQL: the ORM's
    select_related form cost more in Python than the query did in PostgreSQL. ``join``: a
    LEFT JOIN clause whose ``joined_columns`` follow the user's (authenticate_joined)."""
    user_model = _user_model()
    t, u = ApiToken._meta.db_table, user_model._meta.db_table
    selected = ", ".join([*(f"t.{f.column}" for f in ApiToken._meta.concrete_fields),
                         *(f"u.{f.column}" for f in user_model._meta.concrete_fields)])
    if join:
        selected, join = f"{selected}, {joined_columns}", f" LEFT JOIN {join}"
    # Only table and column names from the models are formatted in; values are parameters.
    return f"""SELECT {selected} FROM {t} t JOIN {u} u ON u.id = t.user_id{join}
        WHERE t.token_hash = %s AND NOT t.revoked AND (t.expires_at IS NULL OR t.expires_at > %s)
          AND u.is_active"""  # noqa: S608


def authenticate(raw: str) -> ApiToken | None:
    """The usable token with this clear text, or None (unknown, revoked, expired, or its
    user deactivated). Read from the database on every request: revoking takes effect at once."""
    if not raw or len(raw) > 256:
        return None
    now = timezone.now()
    rows = _first_query(_lookup(), [hash_token(raw), now])
    return _token_from(rows[0], now) if rows else None


def authenticate_joined(raw: str, columns: str, join: str, params: list) -> tuple[ApiToken | None, list[tuple]]:
    """authenticate(), and the rows ``join`` (a LEFT JOIN clause, ``params`` for its
    placeholders) adds to the token's row, as ``columns``, read in the same statement: what
    a call needs next (checkout's pools) costs neither a round trip nor a statement of its
    own. The first of ``columns`` must be a primary key, NULL only where the join matched
    nothing (then no rows). They are read whether or not the token is good; the caller
    answers 401 before it uses them."""
    if not raw or len(raw) > 256:
        return None, []
    now = timezone.now()
    rows = _first_query(_lookup(columns, join), [*params, hash_token(raw), now])
    if not rows:
        return None, []
    skip = width(ApiToken) + width(_user_model())
    return _token_from(rows[0], now), [row[skip:] for row in rows if row[skip] is not None]


def _token_from(row: tuple, now: datetime) -> ApiToken:
    token = load_row(ApiToken, row)
    token.user = load_row(_user_model(), row[width(ApiToken):])
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def _first_query(sql: str, params: list) -> list[tuple]:
    """Run the token lookup, which doubles as Django's connection health check.

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
        return _read(sql, params)
    except (OperationalError, InterfaceError):
        if not checking or connection.is_usable():
            raise  # not a dead connection: the statement itself failed
        connection.close()
    return _read(sql, params)


def _read(sql: str, params: list) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


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
