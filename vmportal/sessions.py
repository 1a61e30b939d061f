"""Sessions read from Redis and kept in the database (SESSION_ENGINE = "vmportal.sessions").

Django's cached_db engine, so that a signed-in page costs a Redis GET instead of a
query, with Redis's copy reached through one client per process rather than Django's
RedisCache (which builds a client object on every call: a third of a session read).
Changes for when Redis is down: a read that falls back to the database, or a new
session's check that its key is unused, does not fail on Redis; and a deletion
(logout, login's key rotation) clears the copy first. Done the other way round, a
logout during a Redis outage would remove the database row but leave the session in
Redis, to be honoured again once Redis came back.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.cached_db import SessionStore as CachedDBStore
from redis import Redis

log = logging.getLogger(__name__)


@cache
def _client() -> Redis:
    # A hung Redis must not hang every page: give up quickly and read the database.
    return Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)


class _RedisCopy:
    """The part of Django's cache API that cached_db uses. JSON, as the database copy is."""

    def get(self, key: str, default: Any = None) -> Any:
        raw = _client().get(key)
        return default if raw is None else json.loads(raw)

    def set(self, key: str, value: Any, timeout: int) -> None:
        if timeout <= 0:
            _client().delete(key)
        else:
            _client().set(key, json.dumps(value), ex=timeout)

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

    def load(self) -> dict:
        try:
            data = self._cache.get(self.cache_key)
        except Exception:  # Redis down, or a damaged copy: read the database
            data = None
        if data is not None:
            return data
        row = self._get_session_from_db()
        if not row:
            return {}
        data = self.decode(row.session_data)
        try:
            self._cache.set(self.cache_key, data, self.get_expiry_age(expiry=row.expire_date))
        except Exception as exc:  # the database answered; Redis holds only a copy
            log.warning("Session not copied to Redis: %s", exc)
        return data

    def exists(self, session_key: str) -> bool:
        # Asked when a new session picks its key: with Redis down, sign-ins still work.
        try:
            if session_key and (self.cache_key_prefix + session_key) in self._cache:
                return True
        except Exception as exc:  # Redis down: the database has every session anyway
            log.warning("Session key checked in the database only, Redis unavailable: %s", exc)
        return super(CachedDBStore, self).exists(session_key)

    def delete(self, session_key: str | None = None) -> None:
        key = session_key if session_key is not None else self.session_key
        if key is None:
            return
        # Raises while Redis is down: the logout fails visibly and the database row stays.
        self._cache.delete(self.cache_key_prefix + key)
        super(CachedDBStore, self).delete(key)
