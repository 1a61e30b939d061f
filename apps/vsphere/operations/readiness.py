"""Whether booting clones are usable: powered on, and the guest reporting what first boot promised."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from apps.vsphere import tasks
from apps.vsphere.operations._common import _usable_ip, _vm
from apps.vsphere.session import Connection
from apps.vsphere.types import GuestExpectation, GuestInfo
from apps.vsphere.vmomi import vim

_GUEST_PATHS = ["name", "runtime.powerState", "guest.ipAddress", "guest.hostName", "guest.toolsRunningStatus"]


def _not_usable(
    values: Mapping[str, Any],
    *,
    require_ip: bool,
    expected_hostname: str | None,
    expected_ip: str | None = None,
    tools_running: bool = False,
) -> str | None:
    """What is still missing before the VM is usable, or None when it is."""
    state = values.get("runtime.powerState")
    if state != "poweredOn":
        return f"the VM is {state or 'in an unknown power state'}"
    ip = _usable_ip(values.get("guest.ipAddress"))
    hostname = values.get("guest.hostName") or ""
    tools = values.get("guest.toolsRunningStatus") or "unknown"
    if tools_running and tools != "guestToolsRunning":
        return f"VMware Tools are not running in the guest yet ({tools})"
    if expected_hostname and hostname.split(".")[0].lower() != expected_hostname.split(".")[0].lower():
        return f"hostname mismatch: the guest reports '{hostname or '(none)'}', expected '{expected_hostname}'"
    if expected_ip and ip != expected_ip:
        return f"address mismatch: the guest reports {ip or 'no usable IP address'}, expected {expected_ip}"
    if require_ip and not ip:
        return f"the guest has no usable IP address yet (tools: {tools})"
    if not (ip or hostname or tools == "guestToolsRunning"):
        return "the guest shows no sign of life yet (no IP, host name or running tools)"
    return None


def _guest(values: Mapping[str, Any]) -> GuestInfo:
    return GuestInfo(
        ip=_usable_ip(values.get("guest.ipAddress")),
        hostname=values.get("guest.hostName") or None,
        tools_status=values.get("guest.toolsRunningStatus") or None,
    )


def check_usable(
    conn: Connection,
    moids: Sequence[str],
    *,
    require_ip: bool = True,
    expect: Mapping[str, GuestExpectation] | None = None,
) -> dict[str, GuestInfo | str]:
    """One look at many booting VMs: GuestInfo for the usable ones, else what is missing.

    One RetrievePropertiesEx however many VMs, so a pool manager can watch a whole
    burst of booting clones at the cost of a single call per look. ``expect`` (by moid)
    adds what first boot promised: running tools, the host name and the address.
    """
    values = tasks.read_many(conn, vim.VirtualMachine, [_vm(conn, m) for m in moids], _GUEST_PATHS,
                             operation="check guests")
    out: dict[str, GuestInfo | str] = {}
    for moid in moids:
        if moid not in values:
            out[moid] = "the VM no longer exists"
            continue
        want = (expect or {}).get(moid) or GuestExpectation()
        missing = _not_usable(values[moid], require_ip=require_ip, expected_hostname=want.hostname,
                              expected_ip=want.ip, tools_running=want.tools_running)
        out[moid] = missing if missing else _guest(values[moid])
    return out


def wait_until_usable(
    conn: Connection, moid: str, *, timeout: float, require_ip: bool = True, expected_hostname: str | None = None
) -> GuestInfo:
    """Wait until the VM is powered on and its guest reports in (bounded, event-driven).

    Usable means: powered on, the expected hostname if one is given, and a routable
    guest IP (``require_ip``) or else any sign of life (IP, hostname or running tools).
    """

    def check(values: dict[str, Any]) -> str | None:
        return _not_usable(values, require_ip=require_ip, expected_hostname=expected_hostname)

    values = tasks.wait_for_condition(
        conn, _vm(conn, moid), _GUEST_PATHS, check, timeout=timeout, operation="wait until usable", name=moid
    )
    return _guest(values)

