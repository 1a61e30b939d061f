"""TLS to vCenter and its hosts: verified by default, pinned by thumbprint, or (visibly) insecure.

Used for the SOAP sessions (``session``) and for every plain HTTPS request beside them:
API version discovery, datastore file transfers, NFC uploads and guest file transfers.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import ssl
from typing import Any

from apps.vsphere.endpoint import Endpoint
from apps.vsphere.errors import PinMismatch, TLSError, translate

log = logging.getLogger(__name__)

_warned_insecure: set[str] = set()


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection that accepts exactly one server certificate.

    pyVmomi's own ``thumbprint`` only kicks in after CA verification has failed, so a
    CA-valid but different certificate would pass; this checks every handshake.
    """

    def __init__(self, *args: Any, pin: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pin = pin

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True) or b""
        # SHA-1 pins only come from vCenter itself (an ESXi host's NFC thumbprint).
        actual = (hashlib.sha1(der, usedforsecurity=False) if len(self._pin) == 40 else hashlib.sha256(der)).hexdigest()
        if actual != self._pin:
            self.close()
            raise PinMismatch(self._pin, actual)


def ssl_context(endpoint: Endpoint) -> ssl.SSLContext:
    """The TLS context for an endpoint: verified by default, pinned, or (visibly) insecure."""
    if endpoint.insecure:
        if endpoint.host not in _warned_insecure:
            _warned_insecure.add(endpoint.host)
            log.warning("TLS certificate verification is OFF for vCenter %s (insecure=True)", endpoint.host)
        return ssl._create_unverified_context()  # noqa: S323 - the explicit lab switch
    if endpoint.thumbprint:
        if len(endpoint.pin) != 64:
            raise TLSError(
                "the pinned thumbprint must be a SHA-256 fingerprint (64 hex digits, colons allowed)",
                operation="connect to",
                obj=endpoint.host,
            )
        return _pinning_context()
    try:
        if endpoint.ca_bundle.strip():
            return ssl.create_default_context(cadata=endpoint.ca_bundle)
        return ssl.create_default_context()
    except (ssl.SSLError, ValueError) as exc:
        raise TLSError(f"the CA bundle is not valid PEM ({exc})", operation="connect to", obj=endpoint.host) from exc


def _pinning_context() -> ssl.SSLContext:
    # The pin replaces chain and name checks (that is what pinning a self-signed
    # certificate means); PinnedHTTPSConnection enforces it on every socket.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def https_connection(
    endpoint: Endpoint, host: str, port: int, *, pin: str | None = None, timeout: float | None = None
) -> http.client.HTTPSConnection:
    """An HTTPS connection with the endpoint's TLS rules (for NFC uploads and discovery).

    ``pin`` (SHA-1 or SHA-256 hex) overrides the endpoint's own, e.g. for the ESXi host
    that serves an NFC lease, whose certificate vCenter vouches for by thumbprint.
    """
    timeout = timeout or endpoint.timeout
    if endpoint.insecure:
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl_context(endpoint))
    if pin:
        return PinnedHTTPSConnection(host, port, timeout=timeout, context=_pinning_context(), pin=pin)
    if endpoint.pin:
        return PinnedHTTPSConnection(host, port, timeout=timeout, context=ssl_context(endpoint), pin=endpoint.pin)
    return http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl_context(endpoint))


def server_thumbprint(endpoint: Endpoint) -> str:
    """SHA-256 of the certificate the endpoint presents (for the admin to pin), unverified."""
    conn = http.client.HTTPSConnection(
        endpoint.hostname,
        endpoint.port,
        timeout=endpoint.timeout,
        context=ssl._create_unverified_context(),  # noqa: S323
    )
    try:
        conn.connect()
        return hashlib.sha256(conn.sock.getpeercert(binary_form=True) or b"").hexdigest()
    except Exception as exc:
        raise translate(exc, operation="read the certificate of", obj=endpoint.host) from exc
    finally:
        conn.close()
