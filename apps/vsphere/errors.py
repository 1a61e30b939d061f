"""vSphere faults as one small family of app errors a person can act on.

Every error names the operation, the object and what vCenter said, and carries a
``permanent`` flag: the retry loop in ``session.call`` and the job runner both use it,
so the decision "try again or give up" lives in exactly one place (the class). A second
flag, ``outage``, marks the transient errors that say nothing about the request, only
that vCenter could not be reached, did not answer in time or lost the session: those
never count toward a pool's ``max_tries`` (unreachable is not failure).

``translate`` branches on the fault *class*, never on its message: the simulator's
messages are Go type names (``*types.InvalidPowerState``) and real vCenters localise them.
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl

from apps.core.errors import Conflict, NotFound, Unavailable, VmPortalError
from apps.vsphere.vmomi import vim, vmodl


class VSphereError(VmPortalError):
    """A vSphere call failed. ``str(exc)`` is the one-line message for a person."""

    http_status = 502
    permanent = True
    outage = False
    summary = "vCenter reported an error"

    def __init__(
        self,
        detail: str = "",
        *,
        operation: str = "",
        obj: str = "",
        fault: str = "",
        permanent: bool | None = None,
        from_vcenter: bool = True,
        outage: bool | None = None,
    ) -> None:
        self.detail = detail or self.summary
        self.operation = operation
        self.obj = obj
        # What vCenter (or the network) said, e.g. "NoDiskSpace: LocalDS_0"; kept apart
        # from ``detail`` so the UI can show it verbatim under the human sentence.
        self.fault = fault
        self.from_vcenter = from_vcenter
        if permanent is not None:
            self.permanent = permanent
        if outage is not None:
            self.outage = outage
        elif not from_vcenter and not self.permanent:
            # A transport error that is worth retrying (refused, reset, no answer) is
            # about the way to vCenter, never about the object the call was for.
            self.outage = True
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = " ".join(part for part in (self.operation, f"'{self.obj}'" if self.obj else "") if part)
        text = f"{where} failed: {self.detail}" if where else self.detail
        if self.fault and self.fault not in text:
            # Transport errors are not something vCenter said; label them honestly.
            label = "vCenter said" if self.from_vcenter else "error"
            text = f"{text} ({label}: {self.fault})"
        return text

    def __str__(self) -> str:
        return self.message


class AuthenticationFailed(VSphereError):
    summary = "vCenter rejected the user name or password; check the vCenter's credentials"


class PermissionDenied(VSphereError):
    http_status = 403
    summary = "the vCenter user lacks a privilege for this; grant it or use another account"


class SessionExpired(VSphereError):
    """The session was logged out or timed out; a fresh login fixes it."""

    permanent = False
    outage = True
    summary = "the vCenter session expired"


class Unreachable(VSphereError, Unavailable):
    # A vCenter that is down for patching comes back; the job layer retries later.
    permanent = False
    outage = True
    http_status = 503
    summary = "vCenter is unreachable; check the host name, port and firewall"


class TLSError(VSphereError, Unavailable):
    http_status = 503
    summary = "the vCenter's TLS certificate could not be verified"


class ObjectNotFound(VSphereError, NotFound):
    http_status = 404
    summary = "the object does not exist (any more)"


class DuplicateName(VSphereError, Conflict):
    http_status = 409
    summary = "an object with this name already exists"


class InvalidState(VSphereError, Conflict):
    http_status = 409
    summary = "the object is not in a state that allows this"


class InvalidPowerState(InvalidState):
    summary = "the VM's power state does not allow this"


class ResourceExhausted(VSphereError, Unavailable):
    http_status = 503
    summary = "not enough disk space, CPU or memory in the target; free capacity or choose another target"


class InvalidSpec(VSphereError):
    http_status = 400
    summary = "vCenter rejected the request as invalid"


class TransientFault(VSphereError, Unavailable):
    permanent = False
    http_status = 503
    summary = "a temporary vCenter or network problem; it will be retried"


class OperationTimeout(VSphereError, Unavailable):
    # Not permanent: the work may still finish on the vCenter; a later attempt sees it.
    permanent = False
    outage = True
    http_status = 504
    summary = "timed out"


class TaskFailed(VSphereError):
    summary = "the vCenter task failed"


# Most specific class first wins, because ``translate`` walks the fault's MRO. Built on the
# first translation, as it names pyVmomi's types (see apps.vsphere.vmomi).
@functools.cache
def _fault_map() -> dict[type, type[VSphereError]]:
    return {
        vim.fault.InvalidLogin: AuthenticationFailed,
        vim.fault.NotAuthenticated: SessionExpired,
        vim.fault.NoPermission: PermissionDenied,
        vmodl.fault.SecurityError: PermissionDenied,
        vmodl.fault.ManagedObjectNotFound: ObjectNotFound,
        vim.fault.NotFound: ObjectNotFound,
        vim.fault.FileNotFound: ObjectNotFound,
        vim.fault.DuplicateName: DuplicateName,
        vim.fault.AlreadyExists: DuplicateName,
        vim.fault.FileAlreadyExists: DuplicateName,
        vim.fault.InvalidPowerState: InvalidPowerState,
        vim.fault.TaskInProgress: TransientFault,
        vim.fault.InvalidState: InvalidState,
        vim.fault.InvalidHostState: InvalidState,
        vim.fault.ResourceInUse: InvalidState,
        vim.fault.NoDiskSpace: ResourceExhausted,
        vim.fault.InsufficientResourcesFault: ResourceExhausted,
        vim.fault.NoCompatibleHost: ResourceExhausted,
        vim.fault.OutOfBounds: InvalidSpec,
        vim.fault.InvalidName: InvalidSpec,
        vim.fault.VmConfigFault: InvalidSpec,
        vim.fault.CustomizationFault: InvalidSpec,
        vim.fault.InvalidDatastore: InvalidSpec,
        vim.fault.OvfFault: InvalidSpec,
        vmodl.fault.InvalidArgument: InvalidSpec,
        vmodl.fault.InvalidRequest: InvalidSpec,
        vmodl.fault.NotSupported: InvalidSpec,
        vmodl.fault.NotImplemented: InvalidSpec,
        vmodl.fault.HostCommunication: TransientFault,
        vmodl.fault.SystemError: TransientFault,
        vmodl.fault.RequestCanceled: TransientFault,
        vim.fault.ConcurrentAccess: TransientFault,
        # Tools are not (yet) running in the guest: try again later.
        vim.fault.GuestOperationsUnavailable: TransientFault,
        vim.fault.Timedout: TransientFault,
        vim.fault.HostConnectFault: Unreachable,
    }


def fault_text(exc: BaseException) -> str:
    """What vCenter said, compactly: fault class plus any message that adds information."""
    if isinstance(exc, vmodl.MethodFault):
        name = type(exc).__name__.rsplit(".", 1)[-1]
        parts: list[str] = []
        msg = (getattr(exc, "msg", "") or "").strip()
        # The simulator's msg is just the Go type name, which repeats the class name.
        if msg and not msg.lstrip("*").startswith("types.") and msg != name:
            parts.append(msg)
        for attr in ("reason", "datastore", "name", "property", "invalidProperty"):
            value = getattr(exc, attr, None)
            if isinstance(value, str) and value and value not in parts:
                parts.append(f"{attr}={value}")
        for lm in getattr(exc, "faultMessage", None) or []:
            text = getattr(lm, "message", "") or ""
            if text and text not in parts:
                parts.append(text)
        return f"{name}: {'; '.join(parts)}" if parts else name
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def translate(exc: BaseException, *, operation: str, obj: str = "", task: bool = False) -> VSphereError:
    """Map a pyVmomi fault or a transport error to the app's error family.

    ``task`` says the fault came out of a finished Task; unknown faults then become
    ``TaskFailed`` rather than the generic base class.
    """
    if isinstance(exc, VSphereError):
        if not exc.operation:
            exc.operation = operation
        if not exc.obj:
            exc.obj = obj
        return exc
    said = fault_text(exc)
    kw: dict = {"operation": operation, "obj": obj, "fault": said}

    if isinstance(exc, vmodl.MethodFault):
        for cls in type(exc).__mro__:
            mapped = _fault_map().get(cls)
            if mapped is not None:
                return mapped(**kw)
        return (TaskFailed if task else VSphereError)(**kw)

    # Transport errors. Order matters: SSL and timeout errors are OSErrors too.
    kw["from_vcenter"] = False
    if isinstance(exc, PinMismatch | ssl.SSLCertVerificationError):
        kw["fault"] = ""  # the sentence below already says everything
    if isinstance(exc, PinMismatch):
        algorithm = "SHA-1" if len(exc.expected) == 40 else "SHA-256"
        return TLSError(
            f"the server certificate's {algorithm} thumbprint is {exc.actual}, but {exc.expected} is pinned; "
            "if the vCenter certificate was replaced on purpose, update the pinned thumbprint",
            **kw,
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = getattr(exc, "verify_message", None) or exc
        return TLSError(
            f"the server certificate is not trusted ({why}); add the CA bundle, "
            "pin the certificate's thumbprint, or (labs only) mark the vCenter insecure",
            **kw,
        )
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError):
        # The peer hung up mid-stream (reset, restart, load balancer): not a trust problem.
        return TransientFault("the connection to vCenter broke off", **kw)
    if isinstance(exc, ssl.SSLError):
        return TLSError(f"TLS handshake failed ({exc.reason or exc}); is this port serving https?", **kw)
    if isinstance(exc, TimeoutError | socket.timeout):
        return TransientFault("no answer from vCenter within the call timeout", **kw)
    if isinstance(exc, socket.gaierror):
        return Unreachable("the host name does not resolve; check the vCenter host name", **kw)
    if isinstance(exc, ConnectionRefusedError):
        return Unreachable("connection refused; check the host and port, and that vCenter is running", **kw)
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError | http.client.HTTPException):
        return TransientFault("the connection to vCenter broke off", **kw)
    if isinstance(exc, OSError):
        return Unreachable(f"network error ({exc.strerror or exc})", **kw)
    return VSphereError(**kw)


class PinMismatch(ssl.SSLError):
    """Raised from the TLS handshake when the peer's certificate is not the pinned one."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"certificate thumbprint {actual} does not match pinned {expected}")
        self.expected = expected
        self.actual = actual
