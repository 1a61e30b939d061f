"""VMware Tools guest operations: files inside a running guest, without its network.

Used at checkout to put the lessee's SSH keys into the guest when the pool has guest
credentials. Only GuestFileManager is used (read, merge, write back), not programs run
in the guest: that needs no shell, works the same on every Linux, and is what the
simulator can play. Passwords travel in the SOAP request only; none is ever logged.
"""

from __future__ import annotations

import contextlib
import http.client
import posixpath
import urllib.parse
from collections.abc import Sequence

from apps.vsphere.errors import DuplicateName, ObjectNotFound, TransientFault, VSphereError, translate
from apps.vsphere.session import Connection
from apps.vsphere.tls import https_connection
from apps.vsphere.vmomi import vim

MAX_GUEST_FILE = 1024 * 1024


def _auth(username: str, password: str) -> vim.vm.guest.NamePasswordAuthentication:
    return vim.vm.guest.NamePasswordAuthentication(username=username, password=password, interactiveSession=False)


def home_directory(username: str) -> str:
    return "/root" if username == "root" else f"/home/{username}"


def _transfer(conn: Connection, url: str, *, method: str, data: bytes | None = None, obj: str) -> bytes:
    # vCenter names itself '*' in transfer URLs when the caller should use the host it
    # already talks to; an ESXi host's own name is used as given.
    parts = urllib.parse.urlsplit(url.replace("://*", f"://{conn.endpoint.host}", 1))
    host = parts.hostname or conn.endpoint.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    operation = "transfer a guest file"
    if parts.scheme == "http":
        http_conn: http.client.HTTPConnection = http.client.HTTPConnection(host, port, timeout=conn.endpoint.timeout)
    else:
        http_conn = https_connection(conn.endpoint, host, port)
    try:
        headers = {"Content-Length": str(len(data))} if data is not None else {}
        http_conn.request(method, target, body=data, headers=headers)
        resp = http_conn.getresponse()
        body = resp.read(MAX_GUEST_FILE + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise translate(exc, operation=operation, obj=obj) from exc
    finally:
        http_conn.close()
    if resp.status >= 300:
        raise TransientFault(f"HTTP {resp.status} {resp.reason}", operation=operation, obj=obj, from_vcenter=False)
    if len(body) > MAX_GUEST_FILE:
        raise VSphereError(f"the file is larger than {MAX_GUEST_FILE} bytes", operation=operation, obj=obj)
    return body


def read_guest_file(conn: Connection, moid: str, path: str, *, username: str, password: str) -> bytes | None:
    """A file's content from inside the guest, or None when it does not exist."""
    fm = conn.guest_file_manager
    try:
        info = conn.call(fm.InitiateFileTransferFromGuest, vm=conn.ref(vim.VirtualMachine, moid),
                         auth=_auth(username, password), guestFilePath=path,
                         operation="read a guest file of", obj=f"{moid}:{path}")
    except ObjectNotFound as exc:
        if exc.fault and "FileNotFound" in exc.fault:
            return None
        raise
    return _transfer(conn, info.url, method="GET", obj=path)


def write_guest_file(
    conn: Connection, moid: str, path: str, data: bytes, *, username: str, password: str, mode: int = 0o600
) -> None:
    """Write (replace) a file inside the guest, creating its directory (mode 0700)."""
    fm = conn.guest_file_manager
    vm = conn.ref(vim.VirtualMachine, moid)
    auth = _auth(username, password)
    with contextlib.suppress(DuplicateName):  # it exists: what we wanted
        conn.call(fm.MakeDirectoryInGuest, vm=vm, auth=auth, directoryPath=posixpath.dirname(path),
                  createParentDirectories=True, operation="create a guest folder of", obj=moid)
    url = conn.call(
        fm.InitiateFileTransferToGuest, vm=vm, auth=auth, guestFilePath=path,
        fileAttributes=vim.vm.guest.FileManager.PosixFileAttributes(permissions=mode),
        fileSize=len(data), overwrite=True, operation="write a guest file of", obj=f"{moid}:{path}",
    )
    _transfer(conn, url, method="PUT", data=data, obj=path)


def add_authorized_keys(
    conn: Connection, moid: str, keys: Sequence[str], *, username: str, password: str, login_user: str | None = None
) -> int:
    """Append SSH public keys to ``login_user``'s authorized_keys (default: ``username``).

    Read, merge, write back: keys already there (pool keys from first boot) stay, and
    running it twice adds nothing twice. Returns how many keys were new.
    """
    path = f"{home_directory(login_user or username)}/.ssh/authorized_keys"
    current = read_guest_file(conn, moid, path, username=username, password=password) or b""
    lines = current.decode("utf-8", "replace").splitlines()
    present = {" ".join(line.split()[:2]) for line in lines if line.strip() and not line.startswith("#")}
    added = [k.strip() for k in keys if k.strip() and " ".join(k.split()[:2]) not in present]
    if not added:
        return 0
    text = "\n".join([*(line for line in lines if line.strip()), *added]) + "\n"
    write_guest_file(conn, moid, path, text.encode(), username=username, password=password)
    return len(added)
