"""Logging filters: secrets kept out of log lines, and expected answers kept out of ERROR."""

from __future__ import annotations

import logging
import re

# vmpooler's /token/<token> carries the credential in the path, and django.request logs
# the path of every refused request (404, 401) as it came.
_TOKEN_PATH = re.compile(r"(/token/)[^/\s?#\"']+")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    return _TOKEN_PATH.sub(rf"\g<1>{REDACTED}", text)


class RedactTokenPaths(logging.Filter):
    """Rewrites a record whose message holds a /token/<token> path; never drops one.

    Attached to the loggers that write request paths (django.request, django.server) so
    every handler, the test suite's included, sees the redacted text, and to the console
    handler for records of any other logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's business, not ours
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        request = getattr(record, "request", None)
        if request is not None and "/token/" in getattr(request, "path", ""):
            # AdminEmailHandler and Sentry-like handlers render the request itself.
            record.request = None
        return True


class PoolEmptyIsNoError(logging.Filter):
    """Logs a pool-empty checkout's 503 at WARNING, not django.request's ERROR.

    Under load an empty pool answers many such 503s (vmpooler clients retry): they are the
    answer the API promises, not a fault, and an ERROR for each buried the real ones. Only a
    503 of a request in which a checkout found a pool empty is lowered (apps.pools.autosize
    marks it); a 500, or a 503 for Redis being down, stays an ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and getattr(record, "status_code", None) == 503:
            from apps.pools.autosize import answered_pool_empty  # noqa: PLC0415 - settings load before apps

            if answered_pool_empty():
                record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True
