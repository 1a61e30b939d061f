"""Fetching OVF/OVA packages from the URLs admins give: which addresses a deploy worker may
reach (VMPORTAL_OVF_URL_ALLOW / VMPORTAL_OVF_URL_DENY) and how much it may read
(VMPORTAL_OVF_MAX_BYTES, for the whole package: an .ova, or an .ovf and its disks).

The address rule is checked when the admin submits the form (a clear error at once) and
again by the job on every connection it opens, redirects and an .ovf's disk files
included, against the address it actually connects to: DNS may answer differently by
then, and a name that pointed at the OVA server may point at the metadata service now.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from django.conf import settings

from apps.core.errors import VmPortalError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class UrlRefused(VmPortalError):
    """The URL (or a redirect, or a file an .ovf names) leads somewhere a worker may not go."""


class PackageTooLarge(VmPortalError):
    """The package is over VMPORTAL_OVF_MAX_BYTES."""


def human_size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _address(text: str) -> IPAddress:
    ip = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    # ::ffff:169.254.169.254 reaches the IPv4 address; judge it as that.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _within(ip: IPAddress, nets: tuple[IPNetwork, ...]) -> IPNetwork | None:
    return next((net for net in nets if net.version == ip.version and ip in net), None)


@dataclass(frozen=True)
class UrlPolicy:
    hosts: frozenset[str] = frozenset()
    domains: tuple[str, ...] = ()
    nets: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls) -> UrlPolicy:
        hosts, domains, nets = set(), [], []
        for entry in settings.VMPORTAL_OVF_URL_ALLOW:
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if entry.startswith(("*.", ".")):
                    domains.append(entry.lstrip("*.").rstrip("."))
                else:
                    hosts.add(entry.rstrip("."))
        deny = tuple(ipaddress.ip_network(e, strict=False) for e in settings.VMPORTAL_OVF_URL_DENY)
        return cls(hosts=frozenset(hosts), domains=tuple(domains), nets=tuple(nets), deny=deny)

    @property
    def restricted(self) -> bool:
        return bool(self.hosts or self.domains or self.nets)

    def name_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.hosts or any(host == d or host.endswith(f".{d}") for d in self.domains)

    def refusal(self, host: str, ip: IPAddress) -> str | None:
        """Why ``host`` at ``ip`` may not be fetched from, or None. The deny list wins over
        the allowlist: an allowed name that now resolves to a denied address is refused."""
        shown = host if host == str(ip) else f"{host} ({ip})"
        denied = _within(ip, self.deny)
        if denied is not None:
            return (f"{shown} is in {denied}, a range deploy URLs may not reach (link-local and cloud "
                    "metadata addresses are refused by default; VMPORTAL_OVF_URL_DENY).")
        if self.restricted and not self.name_allowed(host) and _within(ip, self.nets) is None:
            return f"{shown} is not in VMPORTAL_OVF_URL_ALLOW, the hosts deploy URLs may come from."
        return None


def _resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    try:
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise UrlRefused(f"Cannot resolve {host}: {reason}.") from None


def check_url(url: str, policy: UrlPolicy | None = None) -> None:
    """Refuse (UrlRefused) a URL whose host resolves to any address the policy forbids."""
    policy = policy or UrlPolicy.from_settings()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UrlRefused(f"Only http:// and https:// URLs can be deployed (not {parts.scheme or 'no'} scheme).")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UrlRefused(f"{parts.netloc} has an invalid port.") from None
    host = parts.hostname
    if not host:
        raise UrlRefused("The URL names no host.")
    for *_, sockaddr in _resolve(host, port):
        reason = policy.refusal(host, _address(sockaddr[0]))
        if reason:
            raise UrlRefused(reason)


# ---------------------------------------------------------------- the job's opener


def _checking_connector(policy: UrlPolicy, proxies: set[str]):
    """socket.create_connection, but every address is judged before one is connected to:
    the check and the connection use the same DNS answer."""

    def create_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **_):
        host, port = address
        infos = _resolve(host, port)
        if host.lower() not in proxies:  # through a proxy, the URL itself was checked (check_url)
            for *_, sockaddr in infos:
                reason = policy.refusal(host, _address(sockaddr[0]))
                if reason:
                    raise UrlRefused(reason)
        error: OSError | None = None
        for family, socktype, proto, _canon, sockaddr in infos:
            sock = socket.socket(family, socktype, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                error = exc
                sock.close()
        raise error or OSError(f"no address for {host}")

    return create_connection


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, policy: UrlPolicy):
        self.policy = policy

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(urllib.parse.urljoin(req.full_url, newurl), self.policy)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(policy: UrlPolicy) -> urllib.request.OpenerDirector:
    proxies = {(urllib.parse.urlsplit(p).hostname or "").lower() for p in urllib.request.getproxies().values()}
    connector = _checking_connector(policy, proxies)

    def checked(conn_class):
        def make(host, **kwargs):
            conn = conn_class(host, **kwargs)
            conn._create_connection = connector  # http.client's own hook for the socket
            return conn
        return make

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(checked(http.client.HTTPConnection), req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(checked(http.client.HTTPSConnection), req, context=self._context)

    return urllib.request.build_opener(Http, Https, _CheckedRedirects(policy))


class _Counted(io.RawIOBase):
    """A response that refuses to deliver more bytes than its download has left."""

    def __init__(self, stream, download: PackageDownload, label: str, headers=None):
        self.stream, self.download, self.label = stream, download, label
        self.name = label
        self.headers = headers if headers is not None else {}

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        self.download.count(len(data), self.label)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            super().close()


class PackageDownload:
    """Opens the URLs of one deploy: addresses checked, at most ``limit`` bytes in all."""

    def __init__(self, *, limit: int | None = None, policy: UrlPolicy | None = None):
        self.limit = limit if limit is not None else settings.VMPORTAL_OVF_MAX_BYTES
        self.policy = policy or UrlPolicy.from_settings()
        self.read = 0
        self._opener = _opener(self.policy)

    def count(self, n: int, label: str) -> None:
        self.read += n
        if self.read > self.limit:
            raise PackageTooLarge(f"{label}: the package is larger than the {human_size(self.limit)} limit "
                                  "(VMPORTAL_OVF_MAX_BYTES).")

    def wrap(self, stream, label: str) -> _Counted:
        """``stream`` (an uploaded file) counted against the same limit."""
        return _Counted(stream, self, label)

    def open(self, url: str, timeout: float = 60.0) -> _Counted:
        label = PurePosixPath(urllib.parse.urlsplit(url).path).name or url
        check_url(url, self.policy)
        try:
            resp = self._opener.open(url, timeout=timeout)
        except UrlRefused:
            raise
        except urllib.error.HTTPError as exc:
            raise VmPortalError(f"Cannot download {url}: HTTP {exc.code} {exc.reason}.") from None
        except Exception as exc:  # noqa: BLE001 - any download failure is the admin's to fix
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, UrlRefused):  # raised while connecting, wrapped by urllib
                raise reason from None
            raise VmPortalError(f"Cannot download {url}: {reason}") from None
        length = resp.headers.get("Content-Length", "")
        if length.isdigit() and self.read + int(length) > self.limit:
            resp.close()
            before = f"; with the {human_size(self.read)} read before it, the package is" if self.read else ","
            raise PackageTooLarge(f"{label} is {human_size(int(length))}{before} over the {human_size(self.limit)} "
                                  "limit (VMPORTAL_OVF_MAX_BYTES).")
        return _Counted(resp, self, label, resp.headers)

    __call__ = open  # the vSphere layer's UrlOpener: (url, timeout) -> response
