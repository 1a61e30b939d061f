"""Logging filters that keep secrets out of log lines."""

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
