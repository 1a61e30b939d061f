"""How to reach and log in to one vCenter: an Endpoint, made from inventory's VCenter row.

Its own module so that tls and session, which both take one, need not import each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_PORT = 443


class VCenterRecord(Protocol):
    """What an Endpoint is made from: apps.inventory's VCenter row (vsphere sits below
    inventory, so it names only the fields it reads)."""

    host: str
    username: str
    password: str
    insecure: bool
    ca_bundle: str
    thumbprint: str


@dataclass(frozen=True)
class Endpoint:
    """How to reach and log in to one vCenter. ``host`` is ``name`` or ``name:port``."""

    host: str
    username: str
    password: str = field(repr=False)
    insecure: bool = False
    ca_bundle: str = field(default="", repr=False)
    thumbprint: str = ""
    timeout: float = 60.0

    @classmethod
    def from_vcenter(cls, vc: VCenterRecord) -> Endpoint:
        from django.conf import settings

        return cls(
            host=vc.host.strip(),
            username=vc.username,
            password=vc.password or "",
            insecure=vc.insecure,
            ca_bundle=vc.ca_bundle or "",
            thumbprint=vc.thumbprint or "",
            timeout=float(settings.VSPHERE_CALL_TIMEOUT),
        )

    @property
    def hostname(self) -> str:
        return _split_host(self.host)[0]

    @property
    def port(self) -> int:
        return _split_host(self.host)[1]

    @property
    def pin(self) -> str:
        """The pinned SHA-256 thumbprint as lower-case hex without separators, or ''."""
        return re.sub(r"[^0-9a-f]", "", self.thumbprint.lower())


def _split_host(host: str) -> tuple[str, int]:
    host = host.strip()
    if host.startswith("["):  # [v6::addr]:port
        name, _, rest = host[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") else DEFAULT_PORT
    if host.count(":") == 1:
        name, port = host.split(":")
        return name, int(port)
    return host, DEFAULT_PORT
