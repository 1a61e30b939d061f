"""Shared helpers of the vSphere layer tests (fixtures live in each test module)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import http.server
import ipaddress
import select
import socket
import ssl
import struct
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from apps.vsphere.session import Connection, Endpoint

TEMPLATE = "DC0/vm/Templates/debian-12"
POOL_FOLDER = "DC0/vm/vmportal"


def endpoint_for(sim, **overrides) -> Endpoint:
    """The simulator's endpoint; insecure because its built-in certificate is self-signed."""
    ep = Endpoint(host=sim.address, username=sim.username, password=sim.password, insecure=True, timeout=10.0)
    return replace(ep, **overrides)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Inventory:
    """Moids of the simulator's default inventory, looked up by path."""

    template: str
    pool_folder: str
    templates_folder: str
    pool_c0: str
    pool_c1: str
    hosts_c0: tuple[str, ...]
    hosts_c1: tuple[str, ...]
    datastores: dict[str, str]


def inventory(conn: Connection) -> Inventory:
    index = conn.content.searchIndex

    def moid(path: str) -> str:
        found = index.FindByInventoryPath(path)
        assert found is not None, path
        return found._moId

    def hosts(cluster: str) -> tuple[str, ...]:
        found = []
        for i in range(8):
            obj = index.FindByInventoryPath(f"DC0/host/{cluster}/{cluster}_H{i}")
            if obj is not None:
                found.append(obj._moId)
        return tuple(found)

    return Inventory(
        template=moid(TEMPLATE),
        pool_folder=moid(POOL_FOLDER),
        templates_folder=moid("DC0/vm/Templates"),
        pool_c0=moid("DC0/host/DC0_C0/Resources"),
        pool_c1=moid("DC0/host/DC0_C1/Resources"),
        hosts_c0=hosts("DC0_C0"),
        hosts_c1=hosts("DC0_C1"),
        datastores={name: moid(f"DC0/datastore/{name}") for name in ("LocalDS_0", "LocalDS_1")},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TcpProxy:
    """A TCP forwarder in front of the simulator that can break connections on demand.

    ``mode``: "forward" passes bytes through; "reset" answers every new connection with
    a TCP RST; "blackhole" accepts and never answers. ``reset_all()`` kills live
    connections with RST, like a load balancer or a vCenter restart does.
    With ``tls`` (an SSLContext) it terminates TLS itself and talks TLS to the target,
    so the client sees our certificate instead of the simulator's.
    """

    def __init__(self, target_port: int, *, tls: ssl.SSLContext | None = None) -> None:
        self.target_port = target_port
        self.tls = tls
        self.mode = "forward"
        self.accepted = 0
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.accepted += 1
            if self.mode == "reset":
                _rst(client)
                continue
            if self.mode == "blackhole":
                with self._lock:
                    self._socks.append(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            if self.tls is not None:
                client = self.tls.wrap_socket(client, server_side=True)
                upstream = ssl._create_unverified_context().wrap_socket(upstream)  # noqa: S323 - our own simulator
        except OSError:
            _rst(client)
            return
        with self._lock:
            self._socks += [client, upstream]
        _relay(client, upstream)

    def reset_all(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            _rst(s)

    def stop(self) -> None:
        self._stopped = True
        # shutdown() wakes the thread blocked in accept(); close() alone does not on Linux,
        # and the kernel would keep queueing connections nobody serves.
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self.reset_all()


def _rst(sock: socket.socket) -> None:
    # SO_LINGER 0 makes close() send RST instead of FIN: a hard "connection reset".
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways from one thread: an SSL socket must not be read and written
    by two threads at once, and a short select timeout notices sockets reset_all() closed.
    """
    peers = {a: b, b: a}
    try:
        while a.fileno() != -1 and b.fileno() != -1:
            # Decrypted bytes already buffered inside an SSL socket are invisible to select().
            ready = [s for s in peers if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                ready, _, _ = select.select(list(peers), [], [], 0.2)
            for sock in ready:
                # Non-blocking read: a readable TLS socket may carry only a session
                # ticket and no data, and a blocking recv() would then wait forever.
                sock.setblocking(False)
                try:
                    data = sock.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    continue
                finally:
                    sock.setblocking(True)
                if not data:
                    return
                peers[sock].sendall(data)
    except (OSError, ValueError):
        pass
    finally:
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.close()


@dataclass(frozen=True)
class Pki:
    ca_pem: str
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def make_pki(directory: Path) -> Pki:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vmportal test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file = directory / "server.pem"
    key_file = directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Pki(ca.public_bytes(serialization.Encoding.PEM).decode(), cert_file, key_file)


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 over plain HTTP; yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
