"""Reading and waiting through the PropertyCollector: many tasks in one filter, bounded.

Task state is read as ``info.state``/``info.error``/``info.result`` through a property
filter, never through ``task.info``: pyVmomi fetches the whole TaskInfo there, and the
simulator's snapshot tasks carry an ``info.entity`` that makes pyVmomi raise TypeError.
One filter holds every task a caller started, so a single worker can keep many clones
in flight and the vCenter, not the number of workers, bounds throughput.

Each wait uses its own short-lived PropertyCollector so that its update versions and
filters never mix with another wait (or a watcher) on the same session.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from apps.vsphere.errors import ObjectNotFound, OperationTimeout, VSphereError, translate
from apps.vsphere.session import Connection
from apps.vsphere.types import TaskHandle, TaskOutcome
from apps.vsphere.vmomi import PropertyCollector as PC
from apps.vsphere.vmomi import vim

log = logging.getLogger(__name__)

# Longest single WaitForUpdatesEx. Between waits that returned nothing the properties
# are read again, because some servers (the simulator among them) do not notify every
# change, e.g. config.template; a missed notification then costs at most this long.
RECHECK_SECONDS = 2
TASK_PATHS = ["info.state", "info.error", "info.result", "info.progress"]


# ---------------------------------------------------------------- reads


def retrieve(conn: Connection, spec: PC.FilterSpec, *, operation: str, obj: str = "") -> list[Any]:
    """RetrievePropertiesEx, following continuation tokens; returns ObjectContents."""
    pc = conn.content.propertyCollector
    result = conn.call(pc.RetrievePropertiesEx, [spec], PC.RetrieveOptions(), operation=operation, obj=obj)
    objects = list(result.objects) if result else []
    # The simulator never pages, a vCenter does (about 100-1000 objects a page).
    while result is not None and result.token:
        result = conn.call(pc.ContinueRetrievePropertiesEx, result.token, operation=operation, obj=obj)
        objects.extend(result.objects if result else [])
    return objects


def props(content: Any) -> dict[str, Any]:
    return {p.name: p.val for p in content.propSet or []}


def read(conn: Connection, obj: Any, paths: Sequence[str], *, operation: str, name: str = "") -> dict[str, Any]:
    """Selected properties of one object; ObjectNotFound if it is gone."""
    spec = PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=obj, skip=False)],
        propSet=[PC.PropertySpec(type=type(obj), pathSet=list(paths))],
    )
    found = retrieve(conn, spec, operation=operation, obj=name or obj._moId)
    if not found:
        raise ObjectNotFound(operation=operation, obj=name or obj._moId)
    return props(found[0])


def read_many(
    conn: Connection, kind: type, objs: Iterable[Any], paths: Sequence[str], *, operation: str
) -> dict[str, dict[str, Any]]:
    """Selected properties of many objects of one type in one round trip, by moid."""
    objs = list(objs)
    if not objs:
        return {}
    spec = PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=o, skip=False) for o in objs],
        propSet=[PC.PropertySpec(type=kind, pathSet=list(paths))],
    )
    return {oc.obj._moId: props(oc) for oc in retrieve(conn, spec, operation=operation)}


# ---------------------------------------------------------------- waits


def _max_wait(conn: Connection, remaining: float) -> int:
    # Must stay below the socket timeout, or the wait itself would look like a dead vCenter.
    socket_budget = max(1, int(conn.endpoint.timeout) - 2)
    return max(1, min(int(remaining + 0.999), RECHECK_SECONDS, socket_budget))


def _apply(values: dict[str, Any], changes: Iterable[Any]) -> None:
    for change in changes or []:
        if change.op in ("remove", "indirectRemove"):
            values.pop(change.name, None)
        else:
            values[change.name] = change.val


def wait_for_condition(
    conn: Connection,
    obj: Any,
    paths: Sequence[str],
    check: Callable[[dict[str, Any]], str | None],
    *,
    timeout: float,
    operation: str,
    name: str = "",
) -> dict[str, Any]:
    """Wait (WaitForUpdatesEx, not sleep-polling) until ``check(values)`` returns None.

    ``check`` returns a short description of what is still missing; the timeout error
    repeats the last one, so a person sees *why* it did not become ready.
    """
    label = name or obj._moId
    deadline = time.monotonic() + timeout
    # Often the condition already holds (a clone powered on with its IP): one read then
    # saves the four calls of setting up and tearing down a collector.
    values = read(conn, obj, paths, operation=operation, name=label)
    if check(values) is None:
        return values
    pc = conn.call(conn.content.propertyCollector.CreatePropertyCollector, operation=operation, obj=label)
    try:
        spec = PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=obj, skip=False)],
            propSet=[PC.PropertySpec(type=type(obj), pathSet=list(paths))],
        )
        conn.call(pc.CreateFilter, spec, partialUpdates=False, operation=operation, obj=label)
        values = {}
        version = ""
        first = True
        while True:
            remaining = deadline - time.monotonic()
            wait = 0 if first else _max_wait(conn, remaining)
            update = conn.call(
                pc.WaitForUpdatesEx, version, PC.WaitOptions(maxWaitSeconds=wait), operation=operation, obj=label
            )
            if update is None:
                values = read(conn, obj, paths, operation=operation, name=label)
            else:
                version = update.version
                for fs in update.filterSet or []:
                    for oc in fs.objectSet or []:
                        if oc.kind == "leave":
                            raise ObjectNotFound("it was deleted while waiting", operation=operation, obj=label)
                        _apply(values, oc.changeSet)
            first = False
            missing = check(values) or ""
            if not missing:
                return values
            if time.monotonic() >= deadline:
                raise OperationTimeout(f"not done after {timeout:.0f}s: {missing}", operation=operation, obj=label)
    finally:
        _destroy_quietly(pc)


def _destroy_quietly(pc: Any) -> None:
    with contextlib.suppress(Exception):  # the collector dies with the session anyway
        pc.Destroy()


def task_ref(conn: Connection, handle: TaskHandle) -> vim.Task:
    return conn.ref(vim.Task, handle.moid)


def wait_for_tasks(
    conn: Connection,
    handles: Sequence[TaskHandle],
    timeout: float,
    on_progress: Callable[[TaskHandle, int], None] | None = None,
) -> list[TaskOutcome]:
    """Wait for many tasks through one filter; one outcome per handle, in order.

    Never raises for a task's own failure: each outcome carries its translated error.
    Tasks still running at the deadline come back as ``state="running"`` with an
    OperationTimeout, because they may yet finish and the caller must not assume either.
    ``on_progress(handle, percent)`` hears each change of a running task's progress.
    """
    if not handles:
        return []
    deadline = time.monotonic() + timeout
    by_moid: dict[str, dict[str, Any]] = {h.moid: {} for h in handles}
    refs = [task_ref(conn, h) for h in handles]
    gone: set[str] = set()
    # Short tasks are often done by the time we look: one read, and no collector needed.
    try:
        done = read_many(conn, vim.Task, refs, TASK_PATHS, operation="wait for tasks")
    except ObjectNotFound:
        done = {}
    if len(done) == len(refs) and all(_finished(v) for v in done.values()):
        return [_outcome(h, done[h.moid], False, timeout) for h in handles]
    pc, update = _open_task_filter(conn, refs)
    if pc is None:
        # One unknown task (expired, or from before a vCenter restart) fails the whole
        # filter; find the missing ones and wait for the rest.
        for ref in refs:
            try:
                read(conn, ref, ["info.state"], operation="wait for tasks")
            except ObjectNotFound:
                gone.add(ref._moId)
        refs = [r for r in refs if r._moId not in gone]
        pc, update = _open_task_filter(conn, refs) if refs else (None, None)
        if pc is None and refs:
            raise ObjectNotFound("a task vanished while waiting", operation="wait for tasks")
    reported: dict[str, int] = {}
    try:
        version = ""
        first = True
        while pc is not None:
            if not first:
                wait = _max_wait(conn, deadline - time.monotonic())
                update = conn.call(
                    pc.WaitForUpdatesEx, version, PC.WaitOptions(maxWaitSeconds=wait), operation="wait for tasks"
                )
            if update is None:
                if first:
                    gone.update(m for m, v in by_moid.items() if not v)
                else:
                    pending = [r for r in refs if not _finished(by_moid[r._moId]) and r._moId not in gone]
                    fresh = read_many(conn, vim.Task, pending, TASK_PATHS, operation="wait for tasks")
                    for moid, values in fresh.items():
                        by_moid[moid].update(values)
            else:
                version = update.version
                for fs in update.filterSet or []:
                    for oc in fs.objectSet or []:
                        if oc.kind == "leave":
                            gone.add(oc.obj._moId)
                        else:
                            _apply(by_moid.setdefault(oc.obj._moId, {}), oc.changeSet)
                if first and not update.truncated:
                    # A task missing from the initial snapshot no longer exists on the
                    # server (finished and expired); its outcome cannot be known.
                    gone.update(m for m, v in by_moid.items() if not v)
            first = False
            if on_progress is not None:
                _report_progress(handles, by_moid, reported, on_progress)
            if all(_finished(by_moid[h.moid]) or h.moid in gone for h in handles):
                break
            if time.monotonic() >= deadline:
                break
    finally:
        if pc is not None:
            _destroy_quietly(pc)
    return [_outcome(h, by_moid[h.moid], h.moid in gone, timeout) for h in handles]


def _report_progress(
    handles: Sequence[TaskHandle],
    by_moid: dict[str, dict[str, Any]],
    reported: dict[str, int],
    on_progress: Callable[[TaskHandle, int], None],
) -> None:
    for h in handles:
        values = by_moid[h.moid]
        percent = 100 if values.get("info.state") == "success" else values.get("info.progress")
        if isinstance(percent, int) and reported.get(h.moid) != percent:
            reported[h.moid] = percent
            try:
                on_progress(h, percent)
            except Exception:  # a progress display must never break the wait
                log.exception("progress callback failed for task %s", h.moid)


def _open_task_filter(conn: Connection, refs: Sequence[Any]) -> tuple[Any, Any]:
    """A collector with a filter on the tasks and its initial update; (None, None) if a task is unknown."""
    pc = conn.call(conn.content.propertyCollector.CreatePropertyCollector, operation="wait for tasks")
    try:
        conn.call(pc.CreateFilter, _task_filter(refs), partialUpdates=False, operation="wait for tasks")
        update = conn.call(pc.WaitForUpdatesEx, "", PC.WaitOptions(maxWaitSeconds=0), operation="wait for tasks")
    except ObjectNotFound:
        _destroy_quietly(pc)
        return None, None
    except BaseException:
        _destroy_quietly(pc)
        raise
    return pc, update


def _task_filter(refs: Sequence[Any]) -> PC.FilterSpec:
    return PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=r, skip=False) for r in refs],
        propSet=[PC.PropertySpec(type=vim.Task, pathSet=TASK_PATHS)],
    )


def _finished(values: dict[str, Any]) -> bool:
    return values.get("info.state") in ("success", "error")


def _outcome(handle: TaskHandle, values: dict[str, Any], gone: bool, timeout: float) -> TaskOutcome:
    state = values.get("info.state")
    if state == "success":
        result = values.get("info.result")
        return TaskOutcome(handle, "success", result_moid=getattr(result, "_moId", None))
    if state == "error":
        fault = values.get("info.error")
        error = (
            translate(fault, operation=handle.operation, obj=handle.obj, task=True)
            if fault is not None
            else VSphereError("the task failed without a reason", operation=handle.operation, obj=handle.obj)
        )
        return TaskOutcome(handle, "error", error=error)
    if gone and not values:
        return TaskOutcome(
            handle,
            "error",
            error=ObjectNotFound(
                "the task no longer exists on vCenter, so its outcome is unknown",
                operation=handle.operation,
                obj=handle.obj,
            ),
        )
    return TaskOutcome(
        handle,
        "running",
        error=OperationTimeout(
            f"the vCenter task {handle.moid} was still {state or 'queued'} after {timeout:.0f}s; it may yet finish",
            operation=handle.operation,
            obj=handle.obj,
        ),
    )


def start_task(
    conn: Connection, method: Callable[..., Any], *args: Any, operation: str, obj: str = "", **kwargs: Any
) -> TaskHandle:
    """Call a ``*_Task`` method once (never retried after it may have started work)."""
    task = conn.call(method, *args, operation=operation, obj=obj, idempotent=False, **kwargs)
    return TaskHandle(moid=task._moId, operation=operation, obj=obj)


def wait_for_task(conn: Connection, handle: TaskHandle, timeout: float) -> str | None:
    """Wait for one task; its result moid on success, else its translated error is raised."""
    outcome = wait_for_tasks(conn, [handle], timeout)[0]
    if not outcome.ok:
        assert outcome.error is not None
        raise outcome.error
    return outcome.result_moid


def run_task(
    conn: Connection,
    method: Callable[..., Any],
    *args: Any,
    operation: str,
    obj: str = "",
    timeout: float,
    **kwargs: Any,
) -> str | None:
    return wait_for_task(conn, start_task(conn, method, *args, operation=operation, obj=obj, **kwargs), timeout)
