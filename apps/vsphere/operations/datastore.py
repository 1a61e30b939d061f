"""Files on datastores (first-boot seed ISOs): paths, upload, existence check, delete."""

from __future__ import annotations

import contextlib
import http.client
import urllib.parse
import urllib.request

from pyVmomi import vim

from apps.vsphere import tasks
from apps.vsphere.errors import DuplicateName, ObjectNotFound, TransientFault, translate
from apps.vsphere.operations._common import TASK_TIMEOUT, _find_by_path, entity_path
from apps.vsphere.session import Connection
from apps.vsphere.tls import https_connection

_datastore_locations: dict[tuple[str, str], tuple[str, str]] = {}


def _datastore_location(conn: Connection, datastore_moid: str) -> tuple[str, str]:
    """(datacenter inventory path, datastore name): what /folder URLs and datastore paths need."""
    key = (conn.endpoint.host, datastore_moid)
    if key not in _datastore_locations:
        operation = "find datastore"
        ds = conn.ref(vim.Datastore, datastore_moid)
        name = tasks.read(conn, ds, ["name"], operation=operation, name=datastore_moid).get("name", "")
        parent = tasks.read(conn, ds, ["parent"], operation=operation, name=name).get("parent")
        while parent is not None and not isinstance(parent, vim.Datacenter):
            parent = tasks.read(conn, parent, ["parent"], operation=operation, name=name).get("parent")
        if parent is None:
            raise ObjectNotFound("the datastore is in no datacenter", operation=operation, obj=name)
        _datastore_locations[key] = (entity_path(conn, parent, operation=operation), name)
    return _datastore_locations[key]


def datastore_path(conn: Connection, datastore_moid: str, path: str) -> str:
    """``[name] path``, the form VM devices and FileManager take."""
    return f"[{_datastore_location(conn, datastore_moid)[1]}] {path}"


def upload_datastore_file(conn: Connection, datastore_moid: str, path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` on a datastore (HTTP PUT /folder, session cookie); returns
    the datastore path. Overwrites: uploads are retried by whole jobs, never appended."""
    operation = "upload to datastore"
    dc_path, ds_name = _datastore_location(conn, datastore_moid)
    folder = path.rsplit("/", 1)[0] if "/" in path else ""
    if folder:
        with contextlib.suppress(DuplicateName):
            conn.call(
                conn.content.fileManager.MakeDirectory,
                name=f"[{ds_name}] {folder}",
                datacenter=conn.ref(vim.Datacenter, _datacenter_moid(conn, dc_path)),
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


_datacenter_moids: dict[tuple[str, str], str] = {}


def _datacenter_moid(conn: Connection, dc_path: str) -> str:
    key = (conn.endpoint.host, dc_path)
    if key not in _datacenter_moids:
        found = _find_by_path(conn, dc_path, operation="find datacenter")
        if found is None:
            raise ObjectNotFound(f"there is no datacenter at '{dc_path}'", operation="find datacenter", obj=dc_path)
        _datacenter_moids[key] = found._moId
    return _datacenter_moids[key]


def delete_datastore_file(conn: Connection, datastore_moid: str, path: str, *, timeout: float = TASK_TIMEOUT) -> bool:
    """Delete a datastore file; False if it was already gone (idempotent)."""
    dc_path, ds_name = _datastore_location(conn, datastore_moid)
    name = f"[{ds_name}] {path}"
    try:
        tasks.run_task(
            conn,
            conn.content.fileManager.DeleteDatastoreFile_Task,
            name=name,
            datacenter=conn.ref(vim.Datacenter, _datacenter_moid(conn, dc_path)),
            operation="delete datastore file",
            obj=name,
            timeout=timeout,
        )
    except ObjectNotFound:
        return False
    return True


def datastore_file_exists(conn: Connection, datastore_moid: str, path: str) -> bool:
    """Whether ``path`` is on the datastore (HTTP HEAD on /folder)."""
    dc_path, ds_name = _datastore_location(conn, datastore_moid)
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

