"""Body size and rate limits for every API request (apps.api.http.is_api_path), before any view runs.

Limits are fixed one-minute windows in Redis, shared by every web process: one counter
per client IP and one per presented token (keyed by its hash, so a flood of made-up
tokens is limited too). When Redis is unreachable the API stays up without limits.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from functools import cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from redis.exceptions import RedisError

from apps.api.auth import presented_token
from apps.api.http import error, is_api_path
from apps.api.tokens import hash_token
from apps.core.redis_client import redis_client

log = logging.getLogger(__name__)
WINDOW = 60
KEY_PREFIX = "vmportal:ratelimit"


@cache
def _trusted_proxies(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def _is_trusted_proxy(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in _trusted_proxies(tuple(settings.VMPORTAL_TRUSTED_PROXIES)))


def client_ip(request: HttpRequest) -> str:
    """The client's address: the direct peer, unless that peer is a trusted proxy
    (VMPORTAL_TRUSTED_PROXIES); then the last X-Forwarded-For hop no trusted proxy added.

    Behind a reverse proxy every request comes from the proxy, so one address would carry
    everyone's rate limit; but X-Forwarded-For is whatever the client wrote unless a proxy
    we trust appended to it, so it is read only from those, right to left.
    """
    peer = request.META.get("REMOTE_ADDR", "") or "unknown"
    if not settings.VMPORTAL_TRUSTED_PROXIES or not _is_trusted_proxy(peer):
        return peer
    hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted_proxy(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage where the client's address should be: count it on the proxy
    return hops[0] if hops else peer


# KEYS: the counters; ARGV[1]: their lifetime in seconds. Returns their new counts. One
# EVALSHA instead of a pipeline of an INCR and an EXPIRE per counter: the same round trip,
# a quarter of the commands for redis-py to pack and parse and for Redis to run.
_COUNT = """
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('INCR', key)
  if counts[i] == 1 then redis.call('EXPIRE', key, ARGV[1]) end
end
return counts
"""


@cache
def _count_script():  # noqa: ANN202 (redis-py's Script, called with each URL's client)
    return redis_client().register_script(_COUNT)


def _over_limit(keys_and_limits: list[tuple[str, int]]) -> int | None:
    """Seconds to wait when any counter is over its (non-zero) limit, else None."""
    now = int(time.time())
    window = now - now % WINDOW
    try:
        counts = _count_script()(keys=[f"{KEY_PREFIX}:{key}:{window}" for key, _ in keys_and_limits],
                                 args=[WINDOW * 2], client=redis_client())
    except RedisError as exc:
        log.warning("Rate limiting skipped, Redis unavailable: %s", exc)
        return None
    for count, (_, limit) in zip(counts, keys_and_limits, strict=True):
        if count > limit:
            return max(1, window + WINDOW - now)
    return None


def _has_nul(request: HttpRequest) -> bool:
    if "\x00" in request.path or "%00" in request.META.get("QUERY_STRING", ""):
        return True
    body = request.body
    return b"\x00" in body or b"\\u0000" in body.lower()


class ApiGuardMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest):
        if not is_api_path(request.path):
            return self.get_response(request)
        return refusal(request) or self.get_response(request)


def refusal(request: HttpRequest) -> HttpResponse | None:
    """The answer to an API request that is too big, carries NUL or is over a rate limit; else None.

    Also called by vmportal.lean_api, which serves token-authenticated API calls before
    this middleware would run."""
    limit = settings.VMPORTAL_API_MAX_BODY_BYTES
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return error("Content-Length is not a number.", 400)
    if length > limit:
        return error(f"The body is larger than {limit} bytes.", 413)
    if _has_nul(request):
        # PostgreSQL refuses NUL in text; refusing it here keeps every view from a 500.
        return error("NUL characters are not allowed in requests.", 400)
    # Only the limits that are on are counted: with both off (0) a request costs Redis nothing.
    checks = []
    if per_ip := settings.VMPORTAL_API_RATE_LIMIT_PER_IP:
        checks.append((f"ip:{client_ip(request)}", per_ip))
    if (per_token := settings.VMPORTAL_API_RATE_LIMIT_PER_TOKEN) and (raw := presented_token(request)):
        checks.append((f"token:{hash_token(raw)}", per_token))
    retry_after = _over_limit(checks) if checks else None
    if retry_after is not None:
        return error("Too many requests; slow down.", 429, headers={"Retry-After": str(retry_after)},
                     retry_after=retry_after)
    return None
