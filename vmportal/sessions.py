"""Sessions read from Redis and kept in the database (SESSION_ENGINE = "vmportal.sessions").

Django's cached_db engine, so that a signed-in page costs a Redis GET instead of a
query, with Redis's copy reached through one client per process rather than Django's
RedisCache (which builds a client object on every call: a third of a session read).
Changes for when Redis is down: a read that falls back to the database, or a new
session's check that its key is unused, does not fail on Redis; and a deletion
(logout, login's key rotation) still removes the database row. The copy it could not
remove from Redis must then never be honoured again, in any process, once Redis is
back: every copy carries the sessions' *generation*, and such a deletion starts a new
one, so every older copy reads as a miss (and goes to the database, which has no row).
The generation lives in the database (one row of the session table under a key no
cookie can name) and each process reads it at most every ``GENERATION_TTL`` seconds,
so a signed-in page still costs no query.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.cached_db import SessionStore as CachedDBStore
from django.contrib.sessions.models import Session
from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# Django makes session keys of lower-case letters and digits; this one has a ':' so no
# cookie can load, overwrite or delete it.
GENERATION_KEY = "vmportal:session-generation"
GENERATION_TTL = 2.0  # seconds a process trusts the generation it read last
_SESSION_KEY = re.compile(r"^[a-z0-9]{8,40}$")
_generation_seen: tuple[str, float] = ("", float("-inf"))


_warned_at = float("-inf")


def _warn(message: str, exc: Exception) -> None:
    # Every request of an outage would say the same; once every few seconds is enough.
    global _warned_at
    now = time.monotonic()
    if now - _warned_at >= 10:
        _warned_at = now
        log.warning(message, exc)


def _generation() -> str:
    """The current generation (a few seconds stale at most); '' before the first one."""
    global _generation_seen
    value, read_at = _generation_seen
    now = time.monotonic()
    if now - read_at < GENERATION_TTL:
        return value
    value = Session.objects.filter(session_key=GENERATION_KEY).values_list("session_data", flat=True).first() or ""
    _generation_seen = (value, now)
    return value


def _start_generation() -> None:
    """Make every copy in Redis written so far a miss (they are re-read from the database)."""
    global _generation_seen
    value = uuid.uuid4().hex
    Session.objects.update_or_create(
        session_key=GENERATION_KEY,
        defaults={"session_data": value, "expire_date": datetime(9999, 1, 1, tzinfo=UTC)},  # never cleared
    )
    _generation_seen = (value, time.monotonic())


@cache
def _client() -> Redis:
    # A hung Redis must not hang every page: give up quickly and read the database.
    return Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)


class _RedisCopy:
    """The part of Django's cache API that cached_db uses. JSON, as the database copy is."""

    def get(self, key: str, default: Any = None) -> Any:
        raw = _client().get(key)
        if raw is None:
            return default
        copy = json.loads(raw)
        if not isinstance(copy, dict) or copy.get("g") != _generation():
            return default  # written before a deletion Redis missed: ask the database
        return copy["s"]

    def set(self, key: str, value: Any, timeout: int) -> None:
        if timeout <= 0:
            _client().delete(key)
        else:
            _client().set(key, json.dumps({"g": _generation(), "s": value}), ex=timeout)

    def delete(self, key: str) -> None:
        _client().delete(key)

    def __contains__(self, key: str) -> bool:
        return bool(_client().exists(key))

    async def aget(self, key: str, default: Any = None) -> Any:
        return await sync_to_async(self.get)(key, default)

    async def aset(self, key: str, value: Any, timeout: int) -> None:
        await sync_to_async(self.set)(key, value, timeout)

    async def adelete(self, key: str) -> None:
        await sync_to_async(self.delete)(key)


class SessionStore(CachedDBStore):
    cache_key_prefix = "vmportal:session:"

    def __init__(self, session_key: str | None = None):
        super().__init__(session_key)
        self._cache = _RedisCopy()

    def _validate_session_key(self, key: str | None) -> bool:
        return bool(key and _SESSION_KEY.match(key))

    def load(self) -> dict:
        try:
            data = self._cache.get(self.cache_key)
        except Exception:  # Redis down, or a damaged copy: read the database
            data = None
        if data is not None:
            return data
        row = self._get_session_from_db()
        if not row:
            return {}  # a stale copy, if any, expires with its TTL; it is a miss until then
        data = self.decode(row.session_data)
        try:
            self._cache.set(self.cache_key, data, self.get_expiry_age(expiry=row.expire_date))
        except Exception as exc:  # the database answered; Redis holds only a copy
            _warn("Session not copied to Redis: %s", exc)
        return data

    def exists(self, session_key: str) -> bool:
        # Asked when a new session picks its key: with Redis down, sign-ins still work.
        try:
            if session_key and (self.cache_key_prefix + session_key) in self._cache:
                return True
        except Exception as exc:  # Redis down: the database has every session anyway
            _warn("Session key checked in the database only, Redis unavailable: %s", exc)
        return super(CachedDBStore, self).exists(session_key)

    def save(self, must_create: bool = False) -> None:
        super(CachedDBStore, self).save(must_create)
        try:
            self._cache.set(self.cache_key, self._session, self.get_expiry_age())
        except RedisError as exc:  # saved in the database; the next read copies it back
            _warn("Session not copied to Redis: %s", exc)

    def delete(self, session_key: str | None = None) -> None:
        key = session_key if session_key is not None else self.session_key
        if key is None:
            return
        try:
            self._cache.delete(self.cache_key_prefix + key)
        except RedisError as exc:
            # The copy stays in Redis for now: a new generation keeps it from ever being
            # honoured again, and the logout (or login) goes on without Redis.
            log.warning("Session copy not deleted from Redis (%s); starting a new session generation", exc)
            _start_generation()
        super(CachedDBStore, self).delete(key)

    async def adelete(self, session_key: str | None = None) -> None:
        await sync_to_async(self.delete)(session_key)
