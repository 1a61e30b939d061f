"""Snapshots of a VM: list, create, revert, remove."""

from __future__ import annotations

from typing import Any

from apps.vsphere import tasks
from apps.vsphere.errors import ObjectNotFound
from apps.vsphere.operations._common import TASK_TIMEOUT, _find_snapshot, _moid, _vm, _walk_snapshots
from apps.vsphere.session import Connection
from apps.vsphere.types import SnapshotInfo


def list_snapshots(conn: Connection, moid: str) -> list[SnapshotInfo]:
    values = tasks.read(conn, _vm(conn, moid), ["snapshot"], operation="list snapshots", name=moid)
    current = _moid(getattr(values.get("snapshot"), "currentSnapshot", None))
    return [
        SnapshotInfo(
            moid=n.snapshot._moId,
            name=n.name,
            description=n.description or "",
            created=n.createTime,
            is_current=n.snapshot._moId == current,
        )
        for n in _walk_snapshots(values)
    ]


def create_snapshot(
    conn: Connection,
    moid: str,
    name: str,
    *,
    description: str = "",
    memory: bool = False,
    quiesce: bool = False,
    timeout: float = TASK_TIMEOUT,
) -> SnapshotInfo:
    vm = _vm(conn, moid)
    snap = tasks.run_task(
        conn,
        vm.CreateSnapshot_Task,
        name=name,
        description=description,
        memory=memory,
        quiesce=quiesce,
        operation="create snapshot of",
        obj=moid,
        timeout=timeout,
    )
    for info in list_snapshots(conn, moid):
        if info.moid == snap:
            return info
    raise ObjectNotFound("the new snapshot vanished", operation="create snapshot of", obj=moid)


def _snapshot_node(conn: Connection, moid: str, snapshot: str, *, operation: str) -> Any:
    values = tasks.read(conn, _vm(conn, moid), ["name", "snapshot"], operation=operation, name=moid)
    return values.get("name", moid), _find_snapshot(values, snapshot)


def revert_snapshot(conn: Connection, moid: str, snapshot: str, *, timeout: float = TASK_TIMEOUT) -> None:
    """Revert to a snapshot given by name or moid."""
    name, node = _snapshot_node(conn, moid, snapshot, operation="revert to snapshot")
    if node is None:
        raise ObjectNotFound(f"it has no snapshot '{snapshot}'", operation="revert to snapshot", obj=name)
    tasks.run_task(conn, node.snapshot.RevertToSnapshot_Task, operation="revert to snapshot", obj=name, timeout=timeout)


def remove_snapshot(
    conn: Connection, moid: str, snapshot: str, *, remove_children: bool = False, timeout: float = TASK_TIMEOUT
) -> bool:
    """Remove a snapshot by name or moid. False if there was none (idempotent)."""
    name, node = _snapshot_node(conn, moid, snapshot, operation="remove snapshot")
    if node is None:
        return False
    try:
        tasks.run_task(
            conn,
            node.snapshot.RemoveSnapshot_Task,
            removeChildren=remove_children,
            operation="remove snapshot",
            obj=f"{name}/{node.name}",
            timeout=timeout,
        )
    except ObjectNotFound:
        return False
    return True

