"""Live inventory changes from one vCenter, as plain events.

A private PropertyCollector holds one filter per object type (VMs, hosts, datastores,
folders), each over a ContainerView of the whole inventory, and ``WaitForUpdatesEx`` blocks
until something changes (or ``max_wait`` passes, which is when a stop request is noticed).
vCenter's ``enter``/``modify``/``leave`` updates become ``VMChange``/``HostChange``/
``DatastoreChange``/``FolderChange`` events, handed to a callback in batches. Datastores
and folders are watched for their names (and a datastore's capacity and accessibility), so
a rename in vCenter reaches every host's database copy within one wait, not at the next
full sync.

The first batch after every (re)connect is the complete current state
(``ChangeBatch.resync``): whatever happened while we were away is in it, and a consumer
that keeps a mirror should treat anything it does not list as gone. When the connection
breaks the watcher logs in again with exponential backoff, and a failing callback is
handled the same way (a fresh resync heals whatever the failed batch missed).

One filter per type, not one filter with two property specs: vcsim 0.24 panics when a
filter with several specs sees a change of an object deleted in the same 250 ms batch.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from apps.vsphere.errors import VSphereError
from apps.vsphere.inventory import CallCounter, fetch_vm_markers, object_properties, read_objects
from apps.vsphere.session import Connection, Endpoint, connect
from apps.vsphere.vmomi import PropertyCollector as PC
from apps.vsphere.vmomi import vim

log = logging.getLogger(__name__)

Kind = Literal["enter", "modify", "leave"]

# How long one WaitForUpdatesEx may block: also how quickly a stop request is noticed.
MAX_WAIT_SECONDS = 10
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0


@dataclass(frozen=True)
class VMChange:
    """A VM or template appeared, changed or vanished.

    ``values`` holds only what changed, keyed like ``inventory.VMRecord`` fields: name,
    folder_moid, host_moid, power_state, is_template, tools_status, guest_ip,
    guest_hostname, instance_uuid, marker. A cleared property is None.
    """

    kind: Kind
    moid: str
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HostChange:
    """A host appeared, changed or vanished; ``values`` keyed like ``inventory.HostRecord``.

    Missing quick stats arrive as None (unknown load), never as 0.
    """

    kind: Kind
    moid: str
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatastoreChange:
    """A datastore appeared, changed or vanished; ``values`` keyed like ``inventory.DatastoreRecord``."""

    kind: Kind
    moid: str
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FolderChange:
    """A folder (of any kind: VM, host, datastore or network) appeared, changed or vanished.

    ``values``: name, parent_moid (a folder or, for a datacenter's top folders, the
    datacenter) and, on ``enter``, vm_folder (it can hold VMs: the folders we mirror).
    """

    kind: Kind
    moid: str
    values: Mapping[str, Any] = field(default_factory=dict)


Change = VMChange | HostChange | DatastoreChange | FolderChange


@dataclass(frozen=True)
class ChangeBatch:
    events: tuple[Change, ...]
    # True for the first batch of a connection: the full state, not a difference.
    resync: bool = False


def _ref(value: Any) -> str | None:
    return value._moId if value is not None else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _count(value: Any) -> int:
    return len(value or ())


def _number(value: Any) -> int | None:
    return None if value is None else int(value)


def _holds_vms(value: Any) -> bool:
    return "VirtualMachine" in (value or ())


def _cluster(value: Any) -> str | None:
    return value._moId if isinstance(value, vim.ClusterComputeResource) else None


# vSphere property path -> (event field, conversion)
VM_PATHS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "name": ("name", _text),
    "parent": ("folder_moid", _ref),
    "runtime.powerState": ("power_state", _text),
    "runtime.host": ("host_moid", _ref),
    "config.template": ("is_template", bool),
    "config.instanceUuid": ("instance_uuid", _text),
    "guest.toolsRunningStatus": ("tools_status", _text),
    "guest.ipAddress": ("guest_ip", _text),
    "guest.hostName": ("guest_hostname", _text),
}
HOST_PATHS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "name": ("name", _text),
    "parent": ("cluster_moid", _cluster),
    "runtime.connectionState": ("connection_state", _text),
    "runtime.inMaintenanceMode": ("in_maintenance", bool),
    "configIssue": ("config_issues", _count),
    "overallStatus": ("overall_status", _text),
    "summary.quickStats.overallCpuUsage": ("cpu_usage_mhz", _number),
    "summary.quickStats.overallMemoryUsage": ("memory_usage_mb", _number),
}
DATASTORE_PATHS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "name": ("name", _text),
    "summary.accessible": ("accessible", bool),
    "summary.capacity": ("capacity_bytes", _number),
    "summary.freeSpace": ("free_bytes", _number),
}
FOLDER_PATHS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "name": ("name", _text),
    "parent": ("parent_moid", _ref),
    # Never changes, so it arrives with ``enter`` only: enough to tell a new VM folder.
    "childType": ("vm_folder", _holds_vms),
}
_TYPES: dict[type, tuple[type, dict[str, tuple[str, Callable[[Any], Any]]]]] = {
    vim.VirtualMachine: (VMChange, VM_PATHS),
    vim.HostSystem: (HostChange, HOST_PATHS),
    vim.Datastore: (DatastoreChange, DATASTORE_PATHS),
    vim.Folder: (FolderChange, FOLDER_PATHS),
}


def _values(paths: dict[str, tuple[str, Callable[[Any], Any]]], props: Mapping[str, Any]) -> dict[str, Any]:
    """Event values from a full property read: every watched field, unset ones as None."""
    values: dict[str, Any] = {}
    for path, (name, convert) in paths.items():
        value = props.get(path)
        values[name] = None if value is None else convert(value)
    return values


def translate_update(update: Any) -> Change | None:
    """One vmodl ObjectUpdate as an event (None for a type we do not watch)."""
    match = next((spec for kind, spec in _TYPES.items() if isinstance(update.obj, kind)), None)
    if match is None:
        return None
    event, paths = match
    values: dict[str, Any] = {}
    for change in update.changeSet or ():
        target = paths.get(change.name)
        if target is None:
            continue
        name, convert = target
        removed = change.op in ("remove", "indirectRemove")
        values[name] = None if removed or change.val is None else convert(change.val)
    # Unset properties are not in the changeSet of an ``enter``; say so explicitly, so a
    # new VM without an IP is recorded with none, not with whatever a stale row had.
    if update.kind == "enter":
        for name, _ in paths.values():
            values.setdefault(name, None)
    return event(kind=str(update.kind), moid=update.obj._moId, values=values)


class Watcher:
    """Watches one vCenter until ``stop`` is set. Run ``run()`` in a thread or a command.

    ``on_batch(batch)`` is called from the watcher's thread. ``on_state(connected,
    error)`` tells when the watcher got its connection (error None) or lost it (the
    exception: a VSphereError for vCenter trouble, anything else for a failed callback).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        on_batch: Callable[[ChangeBatch], None],
        *,
        stop: threading.Event | None = None,
        on_state: Callable[[bool, BaseException | None], None] | None = None,
        max_wait: int = MAX_WAIT_SECONDS,
        backoff_first: float = BACKOFF_FIRST,
        backoff_max: float = BACKOFF_MAX,
        connector: Callable[[Endpoint], Any] = connect,
    ) -> None:
        self.endpoint = endpoint
        self.on_batch = on_batch
        self.on_state = on_state
        self.stop = stop or threading.Event()
        # A wait must end well before the call's socket timeout would cut it off.
        self.max_wait = max(1, min(int(max_wait), int(endpoint.timeout) - 5))
        self.backoff_first, self.backoff_max = backoff_first, backoff_max
        self.connector = connector
        self.connected = threading.Event()
        self.connects = 0  # successful (re)connections, for tests and diagnostics
        self.calls = 0
        self.last_error = ""

    def run(self) -> None:
        delay = self.backoff_first
        while not self.stop.is_set():
            try:
                with self.connector(self.endpoint) as conn:
                    self._watch(conn)
                    return  # stop was requested
            except Exception as exc:  # anything: reconnect, then resync
                text = str(exc) if isinstance(exc, VSphereError) else f"{type(exc).__name__}: {exc}"
                healthy = self.connected.is_set()
                self.connected.clear()
                self.last_error = text
                if healthy:
                    delay = self.backoff_first  # it worked until now: retry soon
                log.warning("inventory watcher for %s: %s; reconnecting in %.1f s", self.endpoint.host, text, delay)
                self._state(False, exc)
                # Jitter, so watchers of many processes do not return in step.
                self.stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(self.backoff_max, delay * 2)

    def _state(self, connected: bool, error: BaseException | None) -> None:
        if self.on_state is not None:
            try:
                self.on_state(connected, error)
            except Exception:
                log.exception("inventory watcher state callback failed")

    def _watch(self, conn: Connection) -> None:
        call = CallCounter(conn)
        content = conn.content
        # A private collector: filters on the session's shared one would be seen by
        # every other user of this (pooled) session.
        collector = call(content.propertyCollector.CreatePropertyCollector, operation="create a property collector on")
        views = []
        try:
            for kind, (_, paths) in _TYPES.items():
                view = call(conn.view_manager.CreateContainerView, content.rootFolder, [kind], True,
                            operation="create a watch view on")
                views.append(view)
                traverse = PC.TraversalSpec(name="view", type=vim.view.ContainerView, path="view", skip=False)
                spec = PC.FilterSpec(
                    objectSet=[PC.ObjectSpec(obj=view, skip=True, selectSet=[traverse])],
                    propSet=[PC.PropertySpec(type=kind, pathSet=list(paths))],
                )
                call(collector.CreateFilter, spec, True, operation="create a watch filter on")
            version, events = self._initial(call, collector)
            self.connects += 1
            self.connected.set()
            self.last_error = ""
            self._state(True, None)
            self._deliver(conn, call, events, resync=True)
            options = PC.WaitOptions(maxWaitSeconds=self.max_wait)
            while not self.stop.is_set():
                update = call(collector.WaitForUpdatesEx, version, options, operation="wait for inventory changes on")
                self.calls = call.count
                if update is None:
                    continue  # nothing changed within max_wait
                version = update.version
                self._deliver(conn, call, self._events(update), resync=False)
        finally:
            self.calls = call.count
            # Best effort: after a broken connection these fail, and logout frees them.
            with contextlib.suppress(Exception):
                call(collector.DestroyPropertyCollector, operation="destroy the property collector on",
                     attempts=1)
            for view in views:
                with contextlib.suppress(Exception):
                    call(view.DestroyView, operation="destroy a watch view on", attempts=1)

    def _initial(self, call: CallCounter, collector: Any) -> tuple[str, list[Change]]:
        """The full current state; vCenter may split it (``truncated``) into several answers."""
        events: list[Change] = []
        version = ""
        options = PC.WaitOptions(maxWaitSeconds=self.max_wait)
        while True:
            update = call(collector.WaitForUpdatesEx, version, options, operation="read the watched inventory of")
            if update is None:
                return version, events
            version = update.version
            events.extend(self._events(update))
            if not getattr(update, "truncated", False):
                return version, events

    @staticmethod
    def _events(update: Any) -> list[Change]:
        events = []
        for filter_update in update.filterSet or ():
            for object_update in filter_update.objectSet or ():
                event = translate_update(object_update)
                if event is not None:
                    events.append(event)
        return events

    def _deliver(self, conn: Connection, call: CallCounter, events: list[Change], *,
                 resync: bool) -> None:
        if not resync:
            events = self._settle_enter_and_leave(conn, call, events)
        new_vms = [e.moid for e in events if isinstance(e, VMChange) and e.kind == "enter"]
        if new_vms and not resync:
            # The marker is read for new VMs only (one call per batch), not watched: it
            # is set when we clone, and a watched extraConfig would resend the whole
            # array on every change of any key.
            markers = fetch_vm_markers(conn, new_vms, call=call)
            events = [
                VMChange(e.kind, e.moid, {**e.values, "marker": markers[e.moid]})
                if isinstance(e, VMChange) and e.kind == "enter" and e.moid in markers else e
                for e in events
            ]
        self.on_batch(ChangeBatch(tuple(events), resync=resync))

    @staticmethod
    def _settle_enter_and_leave(conn: Connection, call: CallCounter,
                                events: list[Change]) -> list[Change]:
        """Objects that both entered and left within one update: ask whether they exist.

        The order of updates within one answer does not say which came last: vcsim
        reports a VM moved to another folder as ``enter`` then ``leave`` (it re-adds the
        object), while a VM created and destroyed quickly gives the same pair. One read
        of those objects settles it, and their fresh state replaces the pair.
        """
        kinds: dict[str, set[str]] = {}
        for e in events:
            kinds.setdefault(e.moid, set()).add(e.kind)
        unsure = {moid for moid, seen in kinds.items() if {"enter", "leave"} <= seen}
        if not unsure:
            return events
        settled: list[Change] = []
        for kind, (event, paths) in _TYPES.items():
            moids = [e.moid for e in events if e.moid in unsure and isinstance(e, event)]
            if not moids:
                continue
            found = {oc.obj._moId: object_properties(oc)
                     for oc in read_objects(conn, kind, moids, list(paths), call=call)}
            for moid in dict.fromkeys(moids):
                if moid in found:
                    settled.append(event(kind="enter", moid=moid, values=_values(paths, found[moid])))
                else:
                    settled.append(event(kind="leave", moid=moid))
        return [e for e in events if e.moid not in unsure] + settled


def watch_in_thread(watcher: Watcher, *, name: str = "inventory-watcher") -> threading.Thread:
    thread = threading.Thread(target=watcher.run, name=name, daemon=True)
    thread.start()
    return thread

