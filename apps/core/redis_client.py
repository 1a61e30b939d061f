"""The process's Redis client: one per REDIS_URL, and so one connection pool, shared by its threads.

django_rq.get_connection() builds a new client (a new TCP connection, and a package-metadata
read for its client name) on every call, which was a third of an API checkout's CPU. Code
that talks to Redis on a hot path (rate limits, pool manager nudges, autosize's demand
counts, queueing a job after a checkout) asks here instead. Keyed by URL because tests
switch Redis databases.
"""

from __future__ import annotations

import threading

import django_rq
from django.conf import settings
from redis import Redis
from rq import Queue

_clients: dict[str, Redis] = {}
_lock = threading.Lock()


def redis_client(queue: str = "default") -> Redis:
    """The client for ``queue``'s Redis (RQ_QUEUES; every queue uses REDIS_URL)."""
    url = str(settings.RQ_QUEUES[queue]["URL"])
    client = _clients.get(url)
    if client is None:
        # Under a lock: a second client made by a racing thread would be garbage-collected,
        # and a collected client closes the connections its pipelines are still using.
        with _lock:
            client = _clients.get(url)
            if client is None:
                client = _clients[url] = django_rq.get_connection(queue)
    return client


def rq_queue(name: str) -> Queue:
    """RQ's queue ``name`` on the process's client: django_rq.get_queue() alone makes a new
    client, and so a new connection, each call (~0.7 ms of CPU to connect, and a wait)."""
    return django_rq.get_queue(name, connection=redis_client(name))
