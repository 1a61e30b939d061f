"""Sessions, TLS, retries and the fault family, against the simulator where it matters."""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time

import pytest
from pyVmomi import vim, vmodl

from apps.core.errors import Conflict, NotFound, Unavailable, VmPortalError
from apps.vsphere import errors, tls
from apps.vsphere import session as sessions
from apps.vsphere.errors import (
    AuthenticationFailed,
    DuplicateName,
    TLSError,
    TransientFault,
    Unreachable,
    translate,
)
from apps.vsphere.session import Endpoint, close_all, connect, probe
from apps.vsphere.tls import server_thumbprint
from tests.vsphere import TcpProxy, endpoint_for, free_port, make_pki, unique


@pytest.fixture(autouse=True)
def fresh_pools():
    close_all()
    yield
    close_all()


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(sessions, "RETRY_BASE_DELAY", 0.01)
    monkeypatch.setattr(sessions, "MAX_ATTEMPTS", 3)


@pytest.fixture
def proxy(vcsim):
    p = TcpProxy(vcsim.port)
    yield p
    p.stop()


def counting(fn):
    """Wrap a call so the test can see how often the retry loop invoked it."""

    def wrapper(*args, **kwargs):
        wrapper.attempts += 1
        return fn(*args, **kwargs)

    wrapper.attempts = 0
    return wrapper


# ---------------------------------------------------------------- pure logic


def test_a_changed_password_replaces_the_pool_of_that_account(monkeypatch):
    opened: list[Endpoint] = []
    monkeypatch.setattr(sessions, "_SessionPool", lambda ep, size: opened.append(ep) or _FakePool(ep))
    old = Endpoint("vc1", "svc", "old")
    first = sessions._pool_for(old)
    assert sessions._pool_for(old) is first
    second = sessions._pool_for(Endpoint("vc1", "svc", "new"))
    assert second is not first and first.closed and not second.closed


class _FakePool:
    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.closed = False

    def close(self):
        self.closed = True


def test_endpoint_repr_never_shows_the_password():
    ep = Endpoint("vc.example.com", "svc", "hunter2-secret")
    assert "hunter2" not in repr(ep)
    assert (ep.hostname, ep.port) == ("vc.example.com", 443)
    assert Endpoint("vc:8443", "u", "p").port == 8443
    assert Endpoint("[::1]:9443", "u", "p").hostname == "::1"


def test_endpoint_from_vcenter_takes_model_fields_and_call_timeout(settings):
    from apps.inventory.models import VCenter

    settings.VSPHERE_CALL_TIMEOUT = 17
    vc = VCenter(name="lab", host=" vc1:8443 ", username="svc", password="pw", thumbprint="AA:BB", insecure=False)
    ep = Endpoint.from_vcenter(vc)
    assert (ep.host, ep.port, ep.username, ep.password, ep.timeout) == ("vc1:8443", 8443, "svc", "pw", 17.0)
    assert ep.pin == "aabb"


@pytest.mark.parametrize(
    ("fault", "expected", "permanent"),
    [
        (vim.fault.InvalidLogin(), errors.AuthenticationFailed, True),
        (vim.fault.NotAuthenticated(), errors.SessionExpired, False),
        (vim.fault.NoPermission(), errors.PermissionDenied, True),
        (vmodl.fault.ManagedObjectNotFound(), errors.ObjectNotFound, True),
        (vim.fault.DuplicateName(name="x"), errors.DuplicateName, True),
        (vim.fault.InvalidPowerState(), errors.InvalidPowerState, True),
        (vim.fault.InvalidState(), errors.InvalidState, True),
        (vim.fault.NoDiskSpace(datastore="LocalDS_0"), errors.ResourceExhausted, True),
        (vim.fault.InsufficientResourcesFault(), errors.ResourceExhausted, True),
        (vim.fault.InsufficientStorageSpace(), errors.ResourceExhausted, True),
        (vmodl.fault.InvalidArgument(invalidProperty="spec"), errors.InvalidSpec, True),
        (vmodl.fault.NotSupported(), errors.InvalidSpec, True),
        (vmodl.fault.HostNotConnected(), errors.TransientFault, False),
        (vmodl.fault.SystemError(reason="boom"), errors.TransientFault, False),
        (vim.fault.TaskInProgress(), errors.TransientFault, False),
        (ConnectionResetError(104, "reset"), errors.TransientFault, False),
        (http.client.RemoteDisconnected("closed"), errors.TransientFault, False),
        (TimeoutError("timed out"), errors.TransientFault, False),
        (ssl.SSLEOFError(8, "EOF"), errors.TransientFault, False),
        (ConnectionRefusedError(111, "refused"), errors.Unreachable, False),
        (socket.gaierror(-2, "Name or service not known"), errors.Unreachable, False),
        (ssl.SSLCertVerificationError(1, "verify failed"), errors.TLSError, True),
    ],
)
def test_translate_maps_faults_by_class_with_retry_flag(fault, expected, permanent):
    err = translate(fault, operation="clone", obj="web-001")
    assert type(err) is expected
    assert err.permanent is permanent
    assert isinstance(err, VmPortalError)


def test_translated_message_names_operation_object_and_what_vcenter_said():
    # The simulator's msg is a Go type name; it must not leak into the sentence.
    fault = vim.fault.NoDiskSpace(datastore="LocalDS_0", msg="*types.NoDiskSpace")
    err = translate(fault, operation="clone", obj="web-001")
    text = str(err)
    assert text.startswith("clone 'web-001' failed: not enough disk space")
    assert "vCenter said: NoDiskSpace: datastore=LocalDS_0" in text
    assert "*types" not in text
    assert isinstance(err, Unavailable) and err.http_status == 503


def test_unknown_fault_from_a_task_is_task_failed_and_errors_fit_the_app_family():
    assert type(translate(vim.fault.VimFault(), operation="x", task=True)) is errors.TaskFailed
    assert isinstance(errors.ObjectNotFound(), NotFound)
    assert isinstance(errors.DuplicateName(), Conflict)
    assert errors.ObjectNotFound().http_status == 404


def test_task_still_running_at_the_deadline_is_reported_not_assumed():
    # The simulator finishes every task before it answers, so this branch is only
    # reachable with a real vCenter; the decision itself is plain logic.
    from apps.vsphere.tasks import _outcome
    from apps.vsphere.types import TaskHandle

    outcome = _outcome(TaskHandle("task-7", "clone", "web-001"), {"info.state": "running"}, False, 30)
    assert outcome.state == "running" and not outcome.ok
    assert isinstance(outcome.error, errors.OperationTimeout) and not outcome.error.permanent
    assert str(outcome.error).startswith("clone 'web-001' failed: the vCenter task task-7 was still running after 30s")


def test_backoff_grows_exponentially_is_jittered_and_capped():
    for attempt in range(1, 10):
        full = min(sessions.RETRY_MAX_DELAY, sessions.RETRY_BASE_DELAY * 2 ** (attempt - 1))
        samples = {sessions.backoff_delay(attempt) for _ in range(20)}
        assert all(full / 2 <= s <= full for s in samples)
        assert len(samples) > 1  # jitter: retrying workers do not stampede in lock-step


# ---------------------------------------------------------------- against the simulator


@pytest.mark.vcsim
def test_connect_reuses_one_logged_in_session_and_probe_measures_latency(vcsim):
    ep = endpoint_for(vcsim)
    with connect(ep) as conn:
        key = conn.content.sessionManager.currentSession.key
        assert conn.content.about.apiType == "VirtualCenter"
    with connect(ep) as conn:
        assert conn.content.sessionManager.currentSession.key == key
        assert conn.logins == 1
    assert 0 < probe(ep) < 5000


@pytest.mark.vcsim
def test_bad_password_is_authentication_failed_with_one_clear_message(vcsim):
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed) as caught, connect(endpoint_for(vcsim, password="wrong")):
        pass
    assert time.monotonic() - started < 2, "a bad password must not be retried"
    assert caught.value.permanent
    text = str(caught.value)
    assert text.startswith(f"log in to '{vcsim.address} as {vcsim.username}' failed: ")
    assert "rejected the user name or password" in text and "InvalidLogin" in text
    assert "wrong" not in text


@pytest.mark.vcsim
def test_closed_port_is_unreachable():
    port = free_port()
    with (
        pytest.raises(Unreachable, match="connection refused; check the host and port"),
        connect(Endpoint(f"127.0.0.1:{port}", "u", "p", timeout=2)),
    ):
        pass


def test_unresolvable_host_is_unreachable():
    with (
        pytest.raises(Unreachable, match="does not resolve"),
        connect(Endpoint("no-such-vcenter.invalid", "u", "p", timeout=2)),
    ):
        pass


@pytest.mark.vcsim
def test_certificate_is_verified_by_default(vcsim):
    # Even on 127.0.0.1, where pyVmomi itself would silently skip verification.
    with (
        pytest.raises(TLSError, match="certificate is not trusted") as caught,
        connect(endpoint_for(vcsim, insecure=False)),
    ):
        pass
    assert "mark the vCenter insecure" in str(caught.value)


@pytest.mark.vcsim
def test_pinned_thumbprint_is_accepted_in_any_common_notation(vcsim):
    actual = server_thumbprint(endpoint_for(vcsim))
    colon_upper = ":".join(actual[i : i + 2] for i in range(0, 64, 2)).upper()
    with connect(endpoint_for(vcsim, insecure=False, thumbprint=colon_upper)) as conn:
        assert conn.call(conn.si.CurrentTime, operation="ask the time")


@pytest.mark.vcsim
def test_thumbprint_mismatch_is_tls_error_naming_expected_and_actual(vcsim):
    actual = server_thumbprint(endpoint_for(vcsim))
    pinned = "ab" * 32
    with pytest.raises(TLSError) as caught, connect(endpoint_for(vcsim, insecure=False, thumbprint=pinned)):
        pass
    assert actual in str(caught.value) and pinned in str(caught.value)
    with (
        pytest.raises(TLSError, match="SHA-256 fingerprint"),
        connect(endpoint_for(vcsim, insecure=False, thumbprint="12:34")),
    ):
        pass


@pytest.mark.vcsim
def test_ca_bundle_verifies_the_chain_and_a_foreign_ca_is_rejected(vcsim, tmp_path):
    # The simulator's own certificate has a 1024-bit key that OpenSSL rightly refuses;
    # a TLS-terminating proxy presents a proper certificate from a throwaway CA.
    pki = make_pki(tmp_path)
    proxy = TcpProxy(vcsim.port, tls=pki.server_context())
    try:
        ep = endpoint_for(vcsim, host=proxy.address, insecure=False, ca_bundle=pki.ca_pem)
        with connect(ep) as conn:
            assert conn.call(conn.si.CurrentTime, operation="ask the time")
        other = tmp_path / "other"
        other.mkdir()
        foreign = make_pki(other).ca_pem
        with (
            pytest.raises(TLSError, match="not trusted"),
            connect(endpoint_for(vcsim, host=proxy.address, insecure=False, ca_bundle=foreign)),
        ):
            pass
        with (
            pytest.raises(TLSError, match="not valid PEM"),
            connect(endpoint_for(vcsim, host=proxy.address, insecure=False, ca_bundle="not a certificate")),
        ):
            pass
    finally:
        proxy.stop()


@pytest.mark.vcsim
def test_insecure_mode_is_visible_in_the_log_once(vcsim, proxy, caplog, monkeypatch):
    # Ports are reused across a run: an earlier test's simulator may have had this address.
    monkeypatch.setattr(tls, "_warned_insecure", set())
    ep = endpoint_for(vcsim, host=proxy.address, insecure=True)
    with caplog.at_level(logging.WARNING, logger="apps.vsphere.tls"):
        for _ in range(2):
            with connect(ep):
                pass
            close_all()
    warnings = [r for r in caplog.records if "verification is OFF" in r.getMessage()]
    assert len(warnings) == 1 and proxy.address in warnings[0].getMessage()


@pytest.mark.vcsim
def test_connection_reset_is_retried_transparently(vcsim, proxy, fast_retries):
    with connect(endpoint_for(vcsim, host=proxy.address)) as conn:
        conn.call(conn.si.CurrentTime, operation="ask the time")
        proxy.reset_all()  # the pooled keep-alive socket is now dead
        fn = counting(conn.si.CurrentTime)
        assert conn.call(fn, operation="ask the time")
        assert fn.attempts == 2


@pytest.mark.vcsim
def test_transient_failures_are_retried_a_bounded_number_of_times(vcsim, proxy, fast_retries):
    with connect(endpoint_for(vcsim, host=proxy.address)) as conn:
        conn.call(conn.si.CurrentTime, operation="ask the time")
        proxy.mode = "reset"
        proxy.reset_all()
        fn = counting(conn.si.CurrentTime)
        with pytest.raises(TransientFault, match="gave up after 3 attempts") as caught:
            conn.call(fn, operation="ask the time", obj="vc")
        assert fn.attempts == 3
        assert not caught.value.permanent


@pytest.mark.vcsim
def test_every_call_has_a_timeout(vcsim, proxy, fast_retries):
    with connect(endpoint_for(vcsim, host=proxy.address, timeout=1.0)) as conn:
        conn.call(conn.si.CurrentTime, operation="ask the time")
        proxy.mode = "blackhole"
        proxy.reset_all()
        started = time.monotonic()
        with pytest.raises(TransientFault, match="no answer from vCenter within the call timeout"):
            conn.call(conn.si.CurrentTime, operation="ask the time", attempts=2)
        assert time.monotonic() - started < 4


@pytest.mark.vcsim
def test_permanent_fault_is_not_retried(vcsim, fast_retries):
    with connect(endpoint_for(vcsim)) as conn:
        parent = conn.content.searchIndex.FindByInventoryPath("DC0/vm/vmportal")
        name = unique("dup")
        conn.call(parent.CreateFolder, name, operation="create folder")
        fn = counting(parent.CreateFolder)
        with pytest.raises(DuplicateName):
            conn.call(fn, name, operation="create folder", obj=name)
        assert fn.attempts == 1
        conn.call(conn.content.searchIndex.FindChild(parent, name).Destroy_Task, operation="clean up")


@pytest.mark.vcsim
def test_expired_session_logs_in_again_transparently(vcsim_factory, monkeypatch):
    sim = vcsim_factory("-session-idle", "500ms")
    ep = endpoint_for(sim)
    with connect(ep) as conn:
        first_key = conn.content.sessionManager.currentSession.key
        time.sleep(1.3)
        # Inside a block: the call meets NotAuthenticated, logs in again and succeeds.
        assert conn.call(conn.si.CurrentTime, operation="ask the time")
        assert conn.logins == 2
        assert conn.content.sessionManager.currentSession.key != first_key
    monkeypatch.setattr(sessions, "HEALTH_CHECK_AFTER", 0.2)
    time.sleep(1.3)
    # At checkout: the health check notices the expiry before the caller's first call.
    with connect(ep) as conn:
        assert conn.logins == 3
        before = conn.calls["Login"]
        assert conn.call(conn.si.CurrentTime, operation="ask the time")
        assert conn.calls["Login"] == before


@pytest.mark.vcsim
def test_pool_is_bounded_and_safe_to_share_between_threads(vcsim, monkeypatch):
    monkeypatch.setattr(sessions, "MAX_SESSIONS", 2)
    ep = endpoint_for(vcsim)
    keys: list[str] = []
    failures: list[BaseException] = []

    def work() -> None:
        try:
            with connect(ep) as conn:
                keys.append(conn.content.sessionManager.currentSession.key)
                time.sleep(0.1)
                conn.call(conn.si.CurrentTime, operation="ask the time")
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert len(keys) == 8
    assert len(set(keys)) <= 2


@pytest.mark.vcsim
def test_close_all_logs_out_the_pooled_sessions(vcsim):
    ep = endpoint_for(vcsim)
    with connect(ep) as conn:
        key = conn.content.sessionManager.currentSession.key
    close_all()
    with connect(ep) as conn:
        alive = [s.key for s in conn.content.sessionManager.sessionList]
        assert key not in alive
        assert conn.content.sessionManager.currentSession.key != key


@pytest.mark.vcsim
def test_injected_system_error_is_retried_then_reported(vcsim_factory, fast_retries):
    sim = vcsim_factory("-fail-rate", "1", "-fail-methods", "SessionIsActive", "-fail-fault", "SystemError")
    with connect(endpoint_for(sim)) as conn:
        manager = conn.content.sessionManager
        key = manager.currentSession.key
        fn = counting(manager.SessionIsActive)
        with pytest.raises(TransientFault, match="gave up after 3 attempts") as caught:
            conn.call(fn, key, sim.username, operation="check the session", obj=key)
        assert fn.attempts == 3
        assert "SystemError" in str(caught.value)
