"""Logged-in vSphere sessions: login (over ``tls``), a per-process pool, and the retry loop.

A vSphere login costs several round trips and a session slot on the vCenter, so a
worker keeps a small pool of logged-in ServiceInstances per endpoint and hands one out
per ``with connect(endpoint) as conn:`` block. A session is used by one thread at a
time (its HTTP cookie and keep-alive sockets are per stub); the pool makes that safe to
share between the threads of one worker.

The pool is a cache, never a source of truth: losing it (fork, restart) only costs a
login. Every call goes through ``Connection.call``: bounded by a socket timeout, retried
with exponential backoff and jitter when the fault is transient, re-logged-in when the
session expired, and translated into ``apps.vsphere.errors``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.cookies import SimpleCookie
from typing import Any, TypeVar
from xml.etree import ElementTree

from apps.vsphere.endpoint import Endpoint
from apps.vsphere.errors import (
    OperationTimeout,
    SessionExpired,
    TLSError,
    Unreachable,
    VSphereError,
    translate,
)
from apps.vsphere.tls import PinnedHTTPSConnection, https_connection, ssl_context
from apps.vsphere.vmomi import vim

log = logging.getLogger(__name__)


T = TypeVar("T")

# The most sessions one process holds per endpoint; a worker with more threads than
# this waits for a free session instead of piling logins onto the vCenter.
MAX_SESSIONS = 4
# A session that answered within this many seconds is trusted without a health check;
# older ones are checked before they are handed out, so a job never starts on a dead one.
HEALTH_CHECK_AFTER = 5.0
# Retries of transient faults: attempts in total, and the first backoff (doubling).
MAX_ATTEMPTS = 4
RETRY_BASE_DELAY = 0.5
RETRY_MAX_DELAY = 8.0
# Idle keep-alive sockets are closed client-side before vCenter's own idle cut-off
# (about 15 min behind a load balancer it can be far less).
SOCKET_IDLE_SECONDS = 60


# ---------------------------------------------------------------- one session


def _discover_version(endpoint: Endpoint) -> str:
    """The newest vim25 API version both pyVmomi and the server speak.

    pyVim's SmartConnect does this too, but without any timeout and with its own TLS
    rules (it silently skips verification for 127.0.0.1), so it is done here.
    """
    conn = https_connection(endpoint, endpoint.hostname, endpoint.port)
    try:
        conn.request("GET", "/sdk/vimServiceVersions.xml")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise Unreachable(
            f"{endpoint.host} answered HTTP {resp.status} for the SDK version list; is this a vCenter?",
            operation="connect to",
            obj=endpoint.host,
        )
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 - vCenter's own tiny document
    except ElementTree.ParseError as exc:
        raise Unreachable(
            f"{endpoint.host} did not return a vSphere SDK version list", operation="connect to", obj=endpoint.host
        ) from exc
    offered: set[str] = set()
    for ns in root.findall("namespace"):
        if ns.findtext("name") not in (None, "urn:vim25"):
            continue
        offered.add(ns.findtext("version") or "")
        offered.update(v.text or "" for v in ns.findall("priorVersions/version"))
    from pyVmomi.VmomiSupport import GetServiceVersions, versionIdMap

    for version in GetServiceVersions("vim25"):
        if versionIdMap.get(version) in offered:
            return version
    raise Unreachable(
        f"{endpoint.host} offers no vSphere API version this client supports ({sorted(offered)})",
        operation="connect to",
        obj=endpoint.host,
    )


def present(manager: T | None, what: str, *, obj: str = "") -> T:
    """A manager of the ServiceContent, which the SDK types as optional.

    An ESXi host or a cut-down endpoint may lack some; every vCenter has them, so a
    missing one means vmportal points at the wrong kind of server.
    """
    if manager is None:
        raise VSphereError(f"this server offers no {what}; point vmportal at a vCenter", obj=obj)
    return manager


@functools.cache
def _counting_stub() -> type[Any]:
    """The stub class, made on the first login: it subclasses pyVmomi's (see apps.vsphere.vmomi)."""
    from pyVmomi import SoapStubAdapter

    class _CountingStub(SoapStubAdapter):
        """Counts SOAP calls by method name: the bench and tests prove round-trip budgets with it."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.calls: Counter[str] = Counter()

        def InvokeMethod(self, mo: Any, info: Any, args: Any, outerStub: Any = None) -> Any:  # noqa: N802, N803
            self.calls[info.wsdlName] += 1
            return super().InvokeMethod(mo, info, args, outerStub)

    return _CountingStub


class _Session:
    """One logged-in ServiceInstance. Used by one thread at a time (the pool ensures it)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        version = _discover_version(endpoint)
        self.stub = _counting_stub()(
            host=endpoint.hostname,
            port=endpoint.port,
            version=version,
            path="/sdk",
            sslContext=ssl_context(endpoint),
            # The one timeout knob of pyVmomi: it becomes the socket timeout of every
            # HTTPS connection, so connect and every read of every call are bounded.
            httpConnectionTimeout=endpoint.timeout,
            connectionPoolTimeout=SOCKET_IDLE_SECONDS,
        )
        if endpoint.pin and not endpoint.insecure:
            # pyVmomi annotates scheme as a connection class, but only ever calls it.
            self.stub.scheme = functools.partial(PinnedHTTPSConnection, pin=endpoint.pin)
        self.si = vim.ServiceInstance("ServiceInstance", self.stub)
        self.content = self.si.RetrieveContent()
        self.sessions = present(self.content.sessionManager, "session manager", obj=endpoint.host)
        self.login()

    def login(self) -> None:
        # Login on the same stub replaces its cookie, so managed-object references the
        # caller already holds (they point at this stub) stay usable after a re-login.
        self.sessions.Login(self.endpoint.username, self.endpoint.password, None)
        self.last_ok = time.monotonic()
        self.logins = getattr(self, "logins", 0) + 1

    def alive(self) -> bool:
        """Cheap health check: one property read. False means the session expired."""
        try:
            current = self.sessions.currentSession
        except vim.fault.NotAuthenticated:
            return False
        # A real vCenter returns an unset currentSession (no fault) for an expired one.
        if current is None:
            return False
        self.last_ok = time.monotonic()
        return True

    def logout(self) -> None:
        with contextlib.suppress(Exception):  # best effort: the session may be gone already
            self.sessions.Logout()
        self.stub.DropConnections()


def _open_session(endpoint: Endpoint) -> _Session:
    try:
        return _Session(endpoint)
    except VSphereError:
        raise
    except Exception as exc:
        err = translate(exc, operation="log in to" if _is_fault(exc) else "connect to", obj=endpoint.host)
        if endpoint.username and err.operation == "log in to":
            err.obj = f"{endpoint.host} as {endpoint.username}"
        raise err from exc


def _is_fault(exc: BaseException) -> bool:
    from pyVmomi import vmodl

    return isinstance(exc, vmodl.MethodFault)


# ---------------------------------------------------------------- the pool


class _SessionPool:
    def __init__(self, endpoint: Endpoint, max_sessions: int) -> None:
        self.endpoint = endpoint
        self.max_sessions = max_sessions
        self._idle: list[_Session] = []
        self._count = 0
        self._closed = False
        self._cond = threading.Condition()

    def acquire(self) -> _Session:
        deadline = time.monotonic() + self.endpoint.timeout
        with self._cond:
            while not self._idle and self._count >= self.max_sessions:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OperationTimeout(
                        f"all {self.max_sessions} sessions of this worker stayed busy for {self.endpoint.timeout:.0f}s",
                        operation="get a session for",
                        obj=self.endpoint.host,
                    )
                self._cond.wait(remaining)
            if self._idle:
                session: _Session | None = self._idle.pop()
            else:
                session = None
                self._count += 1  # reserve the slot; the slow login happens unlocked
        if session is None:
            try:
                return _open_session(self.endpoint)
            except BaseException:
                self._forget()
                raise
        try:
            self._ensure_alive(session)
        except BaseException:
            session.stub.DropConnections()
            self._forget()
            raise
        return session

    def _ensure_alive(self, session: _Session) -> None:
        if time.monotonic() - session.last_ok < HEALTH_CHECK_AFTER:
            return
        try:
            ok = session.alive()
        except Exception as exc:
            err = translate(exc, operation="check the session with", obj=self.endpoint.host)
            if err.permanent:
                raise err from exc
            # The sockets broke (vCenter restarted, LB cut them); one fresh attempt.
            session.stub.DropConnections()
            try:
                ok = session.alive()
            except Exception as exc2:
                raise translate(exc2, operation="check the session with", obj=self.endpoint.host) from exc2
        if not ok:
            log.info("vCenter session for %s expired; logging in again", self.endpoint.host)
            relogin(session)

    def release(self, session: _Session, *, broken: bool = False) -> None:
        with self._cond:
            if broken or self._closed:
                self._count -= 1
            else:
                self._idle.append(session)
            self._cond.notify()
        if broken:
            # No logout: the vCenter is unreachable or untrusted, so the attempt would
            # only stall this thread; the server expires the session on its own.
            session.stub.DropConnections()
        elif self._closed:
            session.logout()

    def _forget(self) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for session in idle:
            session.logout()


def relogin(session: _Session) -> None:
    try:
        session.login()
    except Exception as exc:
        raise translate(
            exc, operation="log in to", obj=f"{session.endpoint.host} as {session.endpoint.username}"
        ) from exc


# Keyed by where and as whom: a changed password, CA bundle or timeout for the same
# vCenter account replaces the old pool (whose sessions are logged out) instead of
# leaving it logged in next to the new one.
_pools: dict[tuple[str, str], _SessionPool] = {}
_pools_lock = threading.Lock()


def _reset_after_fork() -> None:
    # A forked child (e.g. an RQ work horse) must not share the parent's TLS sockets;
    # it starts with an empty pool and logs in on first use.
    global _pools, _pools_lock
    _pools = {}
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _pool_for(endpoint: Endpoint) -> _SessionPool:
    key = (endpoint.host.lower(), endpoint.username)
    stale: _SessionPool | None = None
    with _pools_lock:
        pool = _pools.get(key)
        if pool is not None and pool.endpoint != endpoint:
            stale, pool = pool, None
        if pool is None:
            from django.conf import settings

            size = MAX_SESSIONS
            if settings.configured:
                size = getattr(settings, "VSPHERE_SESSIONS_PER_VCENTER", MAX_SESSIONS)
            pool = _pools[key] = _SessionPool(endpoint, int(size))
    if stale is not None:
        stale.close()
    return pool


def close_all() -> None:
    """Log out every pooled session of this process (sessions in use: when released)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


# ---------------------------------------------------------------- the public face


def backoff_delay(attempt: int) -> float:
    """Delay before retry ``attempt`` (1-based): exponential, capped, with jitter.

    Half fixed, half random ("equal jitter"): many workers retrying after the same
    vCenter hiccup spread out instead of stampeding back in lock-step.
    """
    delay = min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2 ** (attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)


class Connection:
    """A logged-in session lent out for one ``with`` block."""

    def __init__(self, pool: _SessionPool, session: _Session) -> None:
        self._pool = pool
        self._session = session
        self.endpoint = pool.endpoint

    @property
    def si(self) -> vim.ServiceInstance:
        return self._session.si

    @property
    def content(self) -> vim.ServiceInstanceContent:
        return self._session.content

    @property
    def search_index(self) -> vim.SearchIndex:
        return present(self.content.searchIndex, "search index", obj=self.endpoint.host)

    @property
    def view_manager(self) -> vim.view.ViewManager:
        return present(self.content.viewManager, "view manager", obj=self.endpoint.host)

    @property
    def file_manager(self) -> vim.FileManager:
        return present(self.content.fileManager, "file manager", obj=self.endpoint.host)

    @property
    def ovf_manager(self) -> vim.OvfManager:
        return present(self.content.ovfManager, "OVF manager", obj=self.endpoint.host)

    @property
    def guest_file_manager(self) -> vim.vm.guest.FileManager:
        guest = present(self.content.guestOperationsManager, "guest operations manager", obj=self.endpoint.host)
        return present(guest.fileManager, "guest file manager", obj=self.endpoint.host)

    @property
    def logins(self) -> int:
        """How often this session logged in (1 + re-logins); tests and diagnostics."""
        return self._session.logins

    @property
    def calls(self) -> Counter[str]:
        """SOAP calls made on this session so far, by method name (a copy)."""
        return Counter(self._session.stub.calls)

    @property
    def session_cookie(self) -> str:
        """The Cookie header value of this session; NFC uploads must carry it."""
        jar = SimpleCookie()
        jar.load(self._session.stub.cookie)
        # Only name=value pairs: the stub keeps the raw Set-Cookie line with its attributes.
        return "; ".join(f"{key}={morsel.coded_value}" for key, morsel in jar.items())

    def ref(self, kind: type[T], moid: str) -> T:
        """A managed-object reference bound to this session, from a stored moid."""
        return kind(moid, self._session.stub)  # type: ignore[call-arg]

    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        operation: str,
        obj: str = "",
        idempotent: bool = True,
        attempts: int | None = None,
        **kwargs: Any,
    ) -> T:
        """Run one vSphere call with re-login, bounded retries and translated faults.

        ``idempotent=False`` (task-starting calls such as CloneVM_Task) disables retries
        after transport errors and transient faults, where the first request may have
        taken effect; a re-login after NotAuthenticated is always safe because vCenter
        rejected the request before doing anything.
        """
        max_attempts = attempts or MAX_ATTEMPTS
        attempt = 0
        relogged = False
        while True:
            attempt += 1
            try:
                result = fn(*args, **kwargs)
                self._session.last_ok = time.monotonic()
                return result
            except Exception as exc:
                err = translate(exc, operation=operation, obj=obj)
                if isinstance(err, SessionExpired) and not relogged:
                    log.info(
                        "vCenter session for %s expired during %s; logging in again", self.endpoint.host, operation
                    )
                    relogin(self._session)
                    relogged = True
                    attempt -= 1
                    continue
                if err.permanent or not idempotent or attempt >= max_attempts:
                    if not err.permanent and attempt > 1:
                        err.detail = f"{err.detail} (gave up after {attempt} attempts)"
                    raise err from exc
                delay = backoff_delay(attempt)
                log.warning(
                    "%s %s: %s; retry %d/%d in %.1fs",
                    operation,
                    obj,
                    err.fault or err.detail,
                    attempt,
                    max_attempts - 1,
                    delay,
                )
                time.sleep(delay)


@contextmanager
def connect(endpoint: Endpoint) -> Iterator[Connection]:
    """Lend a logged-in, health-checked session of this endpoint for one block."""
    pool = _pool_for(endpoint)
    session = pool.acquire()
    broken = False
    try:
        yield Connection(pool, session)
    except VSphereError as exc:
        # A session whose sockets failed may hold a half-read response; start afresh.
        broken = isinstance(exc, Unreachable | TLSError)
        raise
    finally:
        pool.release(session, broken=broken)


def probe(endpoint: Endpoint) -> float:
    """Round-trip latency of one cheap call in milliseconds; raises VSphereError."""
    with connect(endpoint) as conn:
        started = time.perf_counter()
        conn.call(conn.si.CurrentTime, operation="ask the time of", obj=endpoint.host, attempts=1)
        return (time.perf_counter() - started) * 1000.0
