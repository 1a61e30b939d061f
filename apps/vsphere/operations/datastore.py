"""Files on datastores (first-boot seed ISOs): paths, upload, existence check, delete."""

from __future__ import annotations

import contextlib
import http.client
import urllib.parse
import urllib.request
from typing import NamedTuple

from apps.vsphere import tasks
from apps.vsphere.errors import DuplicateName, ObjectNotFound, TransientFault, translate
from apps.vsphere.operations._common import PC, TASK_TIMEOUT
from apps.vsphere.session import Connection
from apps.vsphere.tls import https_connection
from apps.vsphere.vmomi import vim


class _Location(NamedTuple):
    dc_path: str
    ds_name: str
    dc_moid: str


def _datastore_location(conn: Connection, datastore_moid: str) -> _Location:
    """Where a datastore is, by the names /folder URLs and datastore paths need, read afresh
    in one round trip: a per-process cache would keep an old name after a rename in vCenter
    (and each worker host would hold its own), so uploads would go to a name that is gone."""
    operation = "find datastore"
    up = PC.TraversalSpec(name="up", type=vim.ManagedEntity, path="parent", skip=False,
                          selectSet=[PC.SelectionSpec(name="up")])
    spec = PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=conn.ref(vim.Datastore, datastore_moid), skip=False, selectSet=[up])],
        propSet=[PC.PropertySpec(type=vim.ManagedEntity, pathSet=["name", "parent"])],
    )
    found = {oc.obj._moId: (oc.obj, tasks.props(oc))
             for oc in tasks.retrieve(conn, spec, operation=operation, obj=datastore_moid)}
    if datastore_moid not in found:
        raise ObjectNotFound(operation=operation, obj=datastore_moid)
    name = found[datastore_moid][1].get("name", "")
    names: list[str] = []
    dc_moid = ""
    moid = datastore_moid
    while moid in found:
        obj, values = found[moid]
        parent = values.get("parent")
        if parent is None:  # the root folder is not part of inventory paths
            break
        if isinstance(obj, vim.Datacenter) and not dc_moid:
            dc_moid = moid
        if dc_moid:
            names.append(values.get("name", ""))
        moid = parent._moId
    if not dc_moid:
        raise ObjectNotFound("the datastore is in no datacenter", operation=operation, obj=name)
    return _Location("/".join(reversed(names)), name, dc_moid)


def datastore_path(conn: Connection, datastore_moid: str, path: str) -> str:
    """``[name] path``, the form VM devices and FileManager take."""
    return f"[{_datastore_location(conn, datastore_moid)[1]}] {path}"


def upload_datastore_file(conn: Connection, datastore_moid: str, path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` on a datastore (HTTP PUT /folder, session cookie); returns
    the datastore path. Overwrites: uploads are retried by whole jobs, never appended."""
    operation = "upload to datastore"
    dc_path, ds_name, dc_moid = _datastore_location(conn, datastore_moid)
    folder = path.rsplit("/", 1)[0] if "/" in path else ""
    if folder:
        with contextlib.suppress(DuplicateName):
            conn.call(
                conn.file_manager.MakeDirectory,
                name=f"[{ds_name}] {folder}",
                datacenter=conn.ref(vim.Datacenter, dc_moid),
                createParentDirectories=True,
                operation="create datastore folder",
                obj=f"[{ds_name}] {folder}",
            )
    query = urllib.parse.urlencode({"dcPath": dc_path, "dsName": ds_name})
    url = f"/folder/{urllib.parse.quote(path)}?{query}"
    http_conn = https_connection(conn.endpoint, conn.endpoint.hostname, conn.endpoint.port)
    try:
        http_conn.putrequest("PUT", url)
        http_conn.putheader("Content-Type", "application/octet-stream")
        http_conn.putheader("Content-Length", str(len(data)))
        # /folder authenticates by the SOAP session's cookie, like NFC.
        http_conn.putheader("Cookie", conn.session_cookie)
        http_conn.endheaders()
        http_conn.send(data)
        resp = http_conn.getresponse()
        resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise translate(exc, operation=operation, obj=path) from exc
    finally:
        http_conn.close()
    if resp.status >= 300:
        raise TransientFault(
            f"HTTP {resp.status} {resp.reason}", operation=operation, obj=f"[{ds_name}] {path}", from_vcenter=False
        )
    return f"[{ds_name}] {path}"


def delete_datastore_file(conn: Connection, datastore_moid: str, path: str, *, timeout: float = TASK_TIMEOUT) -> bool:
    """Delete a datastore file; False if it was already gone (idempotent)."""
    dc_path, ds_name, dc_moid = _datastore_location(conn, datastore_moid)
    name = f"[{ds_name}] {path}"
    try:
        tasks.run_task(
            conn,
            conn.file_manager.DeleteDatastoreFile_Task,
            name=name,
            datacenter=conn.ref(vim.Datacenter, dc_moid),
            operation="delete datastore file",
            obj=name,
            timeout=timeout,
        )
    except ObjectNotFound:
        return False
    return True


def datastore_file_exists(conn: Connection, datastore_moid: str, path: str) -> bool:
    """Whether ``path`` is on the datastore (HTTP HEAD on /folder)."""
    dc_path, ds_name, dc_moid = _datastore_location(conn, datastore_moid)
    query = urllib.parse.urlencode({"dcPath": dc_path, "dsName": ds_name})
    http_conn = https_connection(conn.endpoint, conn.endpoint.hostname, conn.endpoint.port)
    try:
        http_conn.request("HEAD", f"/folder/{urllib.parse.quote(path)}?{query}",
                          headers={"Cookie": conn.session_cookie})
        resp = http_conn.getresponse()
        resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise translate(exc, operation="look for datastore file", obj=path) from exc
    finally:
        http_conn.close()
    if resp.status == 404:
        return False
    if resp.status >= 300:
        raise TransientFault(f"HTTP {resp.status} {resp.reason}", operation="look for datastore file",
                             obj=f"[{ds_name}] {path}", from_vcenter=False)
    return True

