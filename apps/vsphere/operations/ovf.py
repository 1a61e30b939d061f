"""OVF / OVA deploy: stream the package through an NFC lease, then prepare the result as a template."""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import tarfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO
from xml.etree import ElementTree

from apps.vsphere import tasks
from apps.vsphere.errors import (
    DuplicateName,
    InvalidSpec,
    ObjectNotFound,
    OperationTimeout,
    TransientFault,
    VSphereError,
    fault_text,
    translate,
)
from apps.vsphere.operations._common import PC, ProgressCallback, _find_child
from apps.vsphere.operations.destroy import destroy_vm
from apps.vsphere.operations.templates import prepare_template
from apps.vsphere.session import Connection
from apps.vsphere.tls import https_connection
from apps.vsphere.types import BASE_SNAPSHOT, TemplateInfo
from apps.vsphere.vmomi import vim, vmodl

log = logging.getLogger(__name__)


# A whole deploy: the download, the upload of every disk and the preparation.
DEPLOY_TIMEOUT = 2 * 60 * 60.0
UPLOAD_CHUNK = 1024 * 1024

OvfSource = str | os.PathLike | BinaryIO
# Opens a package URL (the .ova, or an .ovf and each file it references): (url, timeout)
# -> a response with read(), headers and close(). The caller's opener may check addresses and
# count bytes; the default is plain urllib.
UrlOpener = Callable[[str, float], Any]


@dataclass
class _Upload:
    path: str  # the fileItem path (relative name in the package)
    url: str
    create: bool  # fileItem.create: PUT a new file, else POST a disk stream
    size: int | None
    thumbprint: str = ""  # the NFC host's certificate, as vCenter reports it


def _is_url(source: Any) -> bool:
    return isinstance(source, str) and urllib.parse.urlsplit(source).scheme in ("http", "https")


def _open_url(url: str, timeout: float) -> Any:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise InvalidSpec("only http(s) URLs can be deployed", operation="deploy OVF", obj=url)
    try:
        return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - scheme checked above
    except Exception as exc:
        raise InvalidSpec(f"cannot download '{url}': {exc}", operation="deploy OVF", obj=url) from exc


class _Package:
    """An OVF package: its descriptor and a way to stream each referenced file.

    OVA files (tar) are read strictly sequentially, so URLs and uploads stream without
    a temporary copy: the descriptor comes first (the OVA standard demands it), the
    lease is opened, then the disks are uploaded as the tar members go by.
    """

    def __init__(self, source: OvfSource, timeout: float, open_url: UrlOpener | None = None) -> None:
        self.source = source
        self.timeout = timeout
        self._open_url = open_url or _open_url
        self._closers: list[Any] = []
        self._tar: tarfile.TarFile | None = None
        self.descriptor = ""
        name = str(source) if isinstance(source, str | os.PathLike) else getattr(source, "name", "upload.ova")
        self.label = os.path.basename(urllib.parse.urlsplit(str(name)).path) or "package"
        is_ova = not isinstance(source, str | os.PathLike) or str(name).lower().split("?")[0].endswith(".ova")
        if is_ova:
            self._open_ova()
        elif _is_url(source):
            with self._open_url(str(source), timeout) as resp:
                self.descriptor = resp.read().decode("utf-8")
        else:
            path = Path(source)  # type: ignore[arg-type]
            if not path.is_file():
                raise ObjectNotFound(f"there is no file '{path}'", operation="deploy OVF", obj=str(path))
            self.descriptor = path.read_text(encoding="utf-8")

    def _open_ova(self) -> None:
        if _is_url(self.source):
            stream: IO[bytes] = self._open_url(str(self.source), self.timeout)
            self._closers.append(stream)
        elif isinstance(self.source, str | os.PathLike):
            stream = open(self.source, "rb")  # noqa: SIM115 - closed in close()
            self._closers.append(stream)
        else:
            stream = self.source
        try:
            self._tar = tarfile.open(fileobj=stream, mode="r|*")  # noqa: SIM115 - read lazily by files()
            for member in self._tar:
                if member.name.lower().endswith(".ovf"):
                    f = self._tar.extractfile(member)
                    self.descriptor = f.read().decode("utf-8") if f else ""
                    return
                if member.isfile() and not member.name.lower().endswith((".mf", ".cert")):
                    break
        except tarfile.TarError as exc:
            raise InvalidSpec(
                f"'{self.label}' is not a valid OVA (tar) file: {exc}", operation="deploy OVF", obj=self.label
            ) from exc
        raise InvalidSpec(
            f"'{self.label}' has no .ovf descriptor as its first file", operation="deploy OVF", obj=self.label
        )

    def files(self, wanted: Mapping[str, _Upload]) -> Iterator[tuple[_Upload, IO[bytes], int | None]]:
        """Yield (upload, stream, size) for each wanted file, in package order."""
        if self._tar is not None:
            for member in self._tar:
                key = os.path.basename(member.name)
                if member.isfile() and key in wanted:
                    f = self._tar.extractfile(member)
                    if f is not None:
                        yield wanted[key], f, member.size
            return
        for upload in wanted.values():
            if _is_url(self.source):
                resp = self._open_url(urllib.parse.urljoin(str(self.source), upload.path), self.timeout)
                with resp:
                    length = resp.headers.get("Content-Length")
                    yield upload, resp, int(length) if length else None
            else:
                path = Path(self.source).parent / upload.path  # type: ignore[arg-type]
                if not path.is_file():
                    raise ObjectNotFound(
                        f"the OVF references '{upload.path}', which is not next to it",
                        operation="deploy OVF",
                        obj=str(path),
                    )
                with open(path, "rb") as f:
                    yield upload, f, path.stat().st_size

    def close(self) -> None:
        for c in self._closers:
            with contextlib.suppress(Exception):
                c.close()


def _resolve_networks(conn: Connection, mapping: Mapping[str, str]) -> list[vim.OvfManager.NetworkMapping]:
    if not mapping:
        return []
    # A network moid alone does not say whether it is a Network or a DV portgroup, and
    # the SOAP reference must carry the right type; one view lookup resolves both.
    view = conn.call(
        conn.view_manager.CreateContainerView,
        conn.content.rootFolder,
        [vim.Network],
        True,
        operation="look up networks",
    )
    try:
        spec = PC.FilterSpec(
            objectSet=[
                PC.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[PC.TraversalSpec(name="view", type=vim.view.ContainerView, path="view", skip=False)],
                )
            ],
            propSet=[PC.PropertySpec(type=vim.Network, pathSet=["name"])],
        )
        networks = tasks.retrieve(conn, spec, operation="look up networks")
    finally:
        with contextlib.suppress(Exception):
            view.Destroy()
    by_key: dict[str, Any] = {}
    for oc in networks:
        by_key.setdefault(oc.obj._moId, oc.obj)
        by_key.setdefault(tasks.props(oc).get("name", ""), oc.obj)
    result = []
    for ovf_name, target in mapping.items():
        net = by_key.get(target)
        if net is None:
            raise ObjectNotFound(
                f"no network '{target}' for OVF network '{ovf_name}'", operation="deploy OVF", obj=target
            )
        result.append(vim.OvfManager.NetworkMapping(name=ovf_name, network=net))
    return result


def ovf_network_names(descriptor: str) -> list[str]:
    """The network names an OVF descriptor's NetworkSection declares (empty if unreadable)."""
    try:
        root = ElementTree.fromstring(descriptor)  # noqa: S314 - expat refuses entity expansion bombs
    except ElementTree.ParseError:
        return []
    names = []
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "Network":
            name = next((v for k, v in el.attrib.items() if k.rsplit("}", 1)[-1] == "name"), None)
            if name and name not in names:
                names.append(name)
    return names


def deploy_ovf(
    conn: Connection,
    *,
    source: OvfSource,
    name: str,
    folder_moid: str,
    resource_pool_moid: str,
    datastore_moid: str,
    network_mapping: Mapping[str, str] | None = None,
    host_moid: str | None = None,
    disk_provisioning: str = "thin",
    progress: ProgressCallback | None = None,
    snapshot_name: str = BASE_SNAPSHOT,
    timeout: float = DEPLOY_TIMEOUT,
    open_url: UrlOpener | None = None,
) -> TemplateInfo:
    """Deploy an OVF/OVA (URL, local path or file-like upload) as a prepared template.

    CreateImportSpec, ImportVApp, the NFC lease upload of every file (``progress`` gets
    0-100), HttpNfcLeaseComplete, then ``prepare_template``. On any failure the lease is
    aborted and the half-made VM is destroyed. ``open_url`` fetches every URL the
    package needs (an .ovf's disks are next to it, or wherever its hrefs point).
    """
    operation = "deploy OVF"
    deadline = time.monotonic() + timeout
    folder = conn.ref(vim.Folder, folder_moid)
    pool = conn.ref(vim.ResourcePool, resource_pool_moid)
    if _find_child(conn, folder, name, operation=operation) is not None:
        raise DuplicateName(f"the folder already holds a VM named '{name}'", operation=operation, obj=name)
    package = _Package(source, conn.endpoint.timeout, open_url)
    try:
        mapping = dict(network_mapping or {})
        if "*" in mapping:  # one target network for every network the package names
            target = mapping.pop("*")
            mapping = {**dict.fromkeys(ovf_network_names(package.descriptor), target), **mapping}
        params = vim.OvfManager.CreateImportSpecParams(
            entityName=name,
            diskProvisioning=disk_provisioning,
            networkMapping=_resolve_networks(conn, mapping),
        )
        isr = conn.call(
            conn.ovf_manager.CreateImportSpec,
            ovfDescriptor=package.descriptor,
            resourcePool=pool,
            datastore=conn.ref(vim.Datastore, datastore_moid),
            cisp=params,
            operation=operation,
            obj=name,
        )
        if isr.error:
            raise InvalidSpec(
                "vCenter rejected the OVF: " + "; ".join(fault_text(e) for e in isr.error),
                operation=operation,
                obj=name,
            )
        for warning in isr.warning or []:
            log.warning("OVF %s: %s", name, fault_text(warning))
        lease = conn.call(
            pool.ImportVApp,
            spec=isr.importSpec,
            folder=folder,
            host=conn.ref(vim.HostSystem, host_moid) if host_moid else None,
            operation=operation,
            obj=name,
            idempotent=False,
        )
        vm_moid = _upload_through_lease(
            conn, lease, isr.fileItem or [], package, name=name, progress=progress, deadline=deadline
        )
    finally:
        package.close()
    try:
        return prepare_template(
            conn, vm_moid, snapshot_name=snapshot_name, timeout=max(1.0, deadline - time.monotonic())
        )
    except VSphereError:
        with contextlib.suppress(VSphereError):
            destroy_vm(conn, vm_moid, allow_template=True)
        raise


def _upload_through_lease(
    conn: Connection,
    lease: Any,
    file_items: Sequence[Any],
    package: _Package,
    *,
    name: str,
    progress: ProgressCallback | None,
    deadline: float,
) -> str:
    operation = "deploy OVF"

    def lease_ready(values: dict[str, Any]) -> str | None:
        state = values.get("state")
        if state == "error":
            raise translate(
                values.get("error") or vmodl.fault.SystemError(reason="lease failed"),
                operation=operation,
                obj=name,
                task=True,
            )
        return None if state == "ready" else f"the upload lease is {state or 'initializing'}"

    tasks.wait_for_condition(
        conn,
        lease,
        ["state", "error"],
        lease_ready,
        timeout=max(1.0, deadline - time.monotonic()),
        operation=operation,
        name=name,
    )
    info = tasks.read(conn, lease, ["info"], operation=operation, name=name)["info"]
    vm_moid = info.entity._moId
    try:
        urls = {du.importKey: du for du in info.deviceUrl or []}
        wanted: dict[str, _Upload] = {}
        for item in file_items:
            du = urls.get(item.deviceId)
            if du is None:
                raise InvalidSpec(f"vCenter gave no upload URL for '{item.path}'", operation=operation, obj=name)
            wanted[os.path.basename(item.path)] = _Upload(
                path=item.path,
                url=du.url,
                create=bool(item.create),
                size=item.size or None,
                thumbprint=getattr(du, "sslThumbprint", "") or "",
            )
        total = sum(u.size or 0 for u in wanted.values())
        reporter = _Progress(conn, lease, total, progress)
        done: set[str] = set()
        for upload, stream, size in package.files(wanted):
            _upload_file(conn, upload, stream, size, reporter, name=name)
            done.add(upload.path)
            if time.monotonic() > deadline:
                raise OperationTimeout("the upload took longer than allowed", operation=operation, obj=name)
        missing = sorted({u.path for u in wanted.values()} - done)
        if missing:
            raise InvalidSpec(f"the package lacks {', '.join(missing)}", operation=operation, obj=name)
        reporter.finish()
        conn.call(lease.HttpNfcLeaseComplete, operation=operation, obj=name, idempotent=False)
    except BaseException as exc:
        reason = str(exc)[:200] or type(exc).__name__
        with contextlib.suppress(Exception):
            lease.HttpNfcLeaseAbort(vmodl.fault.SystemError(reason=reason))
        # A real vCenter removes the VM on abort, the simulator does not; either way
        # the name must be free for the next attempt.
        with contextlib.suppress(VSphereError):
            destroy_vm(conn, vm_moid, allow_template=True)
        if isinstance(exc, VSphereError | KeyboardInterrupt | SystemExit):
            raise
        if isinstance(exc, OSError | http.client.HTTPException):
            raise translate(exc, operation="upload the disks of", obj=name) from exc
        raise
    return vm_moid


class _Progress:
    """Reports whole percents to the caller and keeps the lease alive meanwhile."""

    LEASE_EVERY = 5.0  # seconds; leases time out after about 5 min without progress

    def __init__(self, conn: Connection, lease: Any, total: int, callback: ProgressCallback | None) -> None:
        self.conn = conn
        self.lease = lease
        self.total = total
        self.callback = callback
        self.sent = 0
        self.percent = -1
        self.lease_at = 0.0
        self.report(0)

    def add(self, n: int) -> None:
        self.sent += n
        self.report(min(99, int(self.sent * 100 / self.total)) if self.total else 0)

    def report(self, percent: int) -> None:
        if percent == self.percent:
            return
        self.percent = percent
        if self.callback:
            self.callback(percent)
        now = time.monotonic()
        if now - self.lease_at >= self.LEASE_EVERY:
            self.lease_at = now
            self.conn.call(self.lease.HttpNfcLeaseProgress, percent, operation="report upload progress")

    def finish(self) -> None:
        self.lease_at = 0.0
        self.report(100)


def _upload_file(
    conn: Connection, upload: _Upload, stream: IO[bytes], size: int | None, reporter: _Progress, *, name: str
) -> None:
    # The lease URL names the host as '*' when it is the vCenter itself.
    url = upload.url.replace("*", conn.endpoint.host, 1) if "://*" in upload.url else upload.url
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or conn.endpoint.hostname
    port = parts.port or 443
    pin = (
        re.sub(r"[^0-9a-f]", "", upload.thumbprint.lower()) if upload.thumbprint and "://*" not in upload.url else None
    )
    http_conn = https_connection(conn.endpoint, host, port, pin=pin)
    length = size if size is not None else upload.size
    try:
        http_conn.putrequest(
            "PUT" if upload.create else "POST", parts.path + (f"?{parts.query}" if parts.query else "")
        )
        http_conn.putheader("Content-Type", "application/x-vnd.vmware-streamVmdk")
        # The NFC service authenticates uploads by the SOAP session's cookie.
        http_conn.putheader("Cookie", conn.session_cookie)
        if upload.create:
            http_conn.putheader("Overwrite", "t")
        if length is not None:
            http_conn.putheader("Content-Length", str(length))
            http_conn.endheaders()
            while chunk := stream.read(UPLOAD_CHUNK):
                http_conn.send(chunk)
                reporter.add(len(chunk))
        else:
            http_conn.putheader("Transfer-Encoding", "chunked")
            http_conn.endheaders()
            while chunk := stream.read(UPLOAD_CHUNK):
                http_conn.send(f"{len(chunk):X}\r\n".encode() + chunk + b"\r\n")
                reporter.add(len(chunk))
            http_conn.send(b"0\r\n\r\n")
        resp = http_conn.getresponse()
        resp.read()
        if resp.status >= 300:
            raise TransientFault(
                f"the upload of '{upload.path}' got HTTP {resp.status} {resp.reason}",
                operation="upload the disks of",
                obj=name,
                from_vcenter=False,
            )
    finally:
        http_conn.close()

