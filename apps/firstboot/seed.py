"""What a clone gets at first boot: cloud-init user-data/meta-data/network-config, the
guestinfo keys or NoCloud seed ISO that carry them, and LinuxPrep's script.

Pure functions of the VM's identity and the pool's configuration (no database, no
vSphere), so the admin form can render them for a sample VM to validate a template.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from django.template import Context, Engine, TemplateSyntaxError

from apps.pools.guest_setup import GuestSetupError

# Admin templates render YAML, not HTML: no autoescaping, and a missing variable is an
# empty string rather than an error, as in Django pages.
_ENGINE = Engine(autoescape=False)


class FirstBootError(GuestSetupError):
    """The pool's first-boot configuration cannot produce what a clone needs."""

    permanent = True


@dataclass(frozen=True)
class Identity:
    """Everything a clone's first boot is rendered from."""

    vm_name: str
    hostname: str
    pool: str
    instance_id: str
    domain: str = "localdomain"
    timezone: str = "UTC"
    ip: str | None = None
    prefix: int | None = None
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    admin_username: str = "vmportal"
    password_hash: str = field(default="", repr=False)
    ssh_authorized_keys: tuple[str, ...] = ()

    @property
    def fqdn(self) -> str:
        return f"{self.hostname}.{self.domain}" if self.domain else self.hostname

    @property
    def netmask(self) -> str | None:
        if self.prefix is None:
            return None
        bits = (0xFFFFFFFF << (32 - self.prefix)) & 0xFFFFFFFF
        return ".".join(str(bits >> s & 0xFF) for s in (24, 16, 8, 0))

    def context(self) -> dict[str, Any]:
        return {
            "vm_name": self.vm_name, "hostname": self.hostname, "fqdn": self.fqdn, "domain": self.domain,
            "pool": self.pool, "instance_id": self.instance_id, "timezone": self.timezone,
            "ip": self.ip or "", "prefix": self.prefix or "", "netmask": self.netmask or "",
            "gateway": self.gateway or "", "dns": list(self.dns), "admin_username": self.admin_username,
            "password_hash": self.password_hash, "ssh_authorized_keys": list(self.ssh_authorized_keys),
        }


def hostname_for(vm_name: str, *, windows: bool = False) -> str:
    """A valid host name from a VM name: [a-z0-9-], at most 63 (NetBIOS: 15) characters.

    A pool's VM names end in a unique suffix, so a Windows name keeps the end.
    """
    name = re.sub(r"[^a-z0-9-]+", "-", vm_name.lower()).strip("-") or "vm"
    if windows and len(name) > 15:
        return name[-15:].strip("-")
    return name[:63].strip("-")


def render(template: str, identity: Identity, *, what: str) -> str:
    try:
        return _ENGINE.from_string(template).render(Context(identity.context()))
    except TemplateSyntaxError as exc:
        raise FirstBootError(f"The {what} template has an error: {exc}") from None


def user_data(template: str, identity: Identity) -> str:
    text = render(template, identity, what="user-data")
    if text.lstrip().startswith("#cloud-config"):
        import yaml  # here, not at the top: see seed_iso

        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise FirstBootError(f"The rendered user-data is not valid YAML{where}: "
                                 f"{getattr(exc, 'problem', None) or exc}") from None
        if parsed is not None and not isinstance(parsed, dict):
            raise FirstBootError("The rendered #cloud-config user-data must be a YAML mapping.")
    return text


def network_config(identity: Identity) -> dict[str, Any]:
    """netplan v2: the fixed address with gateway and DNS, else DHCP, on the first NIC."""
    nic: dict[str, Any] = {"match": {"name": "e*"}}
    if identity.ip:
        nic["addresses"] = [f"{identity.ip}/{identity.prefix or 24}"]
        if identity.gateway:
            nic["routes"] = [{"to": "default", "via": identity.gateway}]
        if identity.dns or identity.domain:
            search = [identity.domain] if identity.domain else []
            nic["nameservers"] = {"addresses": list(identity.dns), "search": search}
    else:
        nic["dhcp4"] = True
    return {"version": 2, "ethernets": {"nic0": nic}}


def meta_data(template: str, identity: Identity, *, with_network: bool) -> dict[str, Any]:
    """The admin's extra keys, then ours (which win: readiness checks what they say)."""
    extra: Any = {}
    if template.strip():
        text = render(template, identity, what="meta-data")
        import yaml

        try:
            extra = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise FirstBootError(f"The rendered meta-data is not valid YAML: {exc}") from None
        if not isinstance(extra, dict):
            raise FirstBootError("The meta-data template must render a YAML mapping (key: value lines).")
    data = {**extra, "instance-id": identity.instance_id, "local-hostname": identity.hostname}
    if with_network:
        data["network"] = network_config(identity)
        # cloud-init's VMware datasource then removes the user-data from the guest's view.
        data["cleanup-guestinfo"] = ["userdata", "vendordata"]
    return data


def _encode(text: str) -> str:
    return base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()


def guestinfo(user_data_text: str, meta: dict[str, Any]) -> dict[str, str]:
    """extraConfig keys for cloud-init's VMware datasource (gzip+base64: smaller VMX)."""
    return {
        "guestinfo.metadata": _encode(json.dumps(meta, sort_keys=True)),
        "guestinfo.metadata.encoding": "gzip+base64",
        "guestinfo.userdata": _encode(user_data_text),
        "guestinfo.userdata.encoding": "gzip+base64",
    }


# Scrubbed once the VM is ready: the user-data holds the password hash.
GUESTINFO_SECRETS = {"guestinfo.userdata": "", "guestinfo.userdata.encoding": ""}


def seed_iso(user_data_text: str, meta: dict[str, Any], network: dict[str, Any]) -> bytes:
    """A NoCloud seed: volume "cidata" with user-data, meta-data and network-config.

    Rock Ridge and Joliet carry the real names; the ISO 9660 8.3 names are what the
    simulator reads (tools/vcsim/firstboot.go).
    """
    files = [
        ("user-data", "USERDATA", user_data_text.encode()),
        ("meta-data", "METADATA", json.dumps(meta, sort_keys=True).encode()),
        ("network-config", "NETWORKC", json.dumps(network, sort_keys=True).encode()),
    ]
    # Imported here: only clone workers build seeds, and every web worker imports this
    # module (2 MB of pycdlib objects each; bench/memory.py).
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident="cidata", joliet=3, rock_ridge="1.09")
    try:
        for name, short, data in files:
            iso.add_fp(io.BytesIO(data), len(data), f"/{short}.;1", rr_name=name, joliet_path=f"/{name}")
        out = io.BytesIO()
        iso.write_fp(out)
    finally:
        iso.close()
    return out.getvalue()


def linux_script(identity: Identity) -> str:
    """LinuxPrep customisation script: the admin account, its password hash, pool keys.

    Runs as root in the guest after customisation (vSphere 7.0+, and only where the
    guest's VMware Tools allow custom scripts: ``vmware-toolbox-cmd config set deployPkg
    enable-custom-scripts true`` in the template).
    """
    user = shlex.quote(identity.admin_username)
    home = "/root" if identity.admin_username == "root" else f"/home/{identity.admin_username}"
    keys = "\n".join(identity.ssh_authorized_keys)
    lines = [
        "#!/bin/sh",
        'if [ "$1" = "postcustomization" ]; then',
        f"  id -u {user} >/dev/null 2>&1 || useradd -m -s /bin/bash {user}",
        f"  (getent group sudo >/dev/null && usermod -aG sudo {user}) || usermod -aG wheel {user} || true",
        f"  echo {shlex.quote(identity.admin_username + ':' + identity.password_hash)} | chpasswd -e",
    ]
    if keys:
        lines += [
            f"  install -d -m 700 -o {user} {shlex.quote(home)}/.ssh",
            f"  cat >> {shlex.quote(home)}/.ssh/authorized_keys <<'VMPORTAL_KEYS'",
            keys,
            "VMPORTAL_KEYS",
            f"  chmod 600 {shlex.quote(home)}/.ssh/authorized_keys",
            f"  chown {user} {shlex.quote(home)}/.ssh/authorized_keys",
        ]
    lines.append("fi")
    return "\n".join(lines) + "\n"
