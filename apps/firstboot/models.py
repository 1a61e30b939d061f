"""First-boot configuration of pools, the addresses and secrets handed to clones, SSH keys.

Kept apart from apps.pools: a pool without a PoolFirstBoot row boots as before (no
customisation), and everything here hangs off Pool and VM by one-to-one or foreign keys.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from apps.core.crypto import EncryptedTextField
from apps.core.states import transition
from apps.inventory.models import Datastore, VCenter
from apps.pools.models import VM, Pool

DEFAULT_USER_DATA = """#cloud-config
# Rendered for each clone (Django template syntax). Variables: hostname, fqdn, domain,
# vm_name, pool, ip, prefix, gateway, dns, timezone, admin_username, password_hash,
# ssh_authorized_keys (a list), instance_id.
hostname: {{ hostname }}
fqdn: {{ fqdn }}
timezone: {{ timezone }}
users:
  - default
  - name: {{ admin_username }}
    groups: [sudo]
    shell: /bin/bash
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    lock_passwd: false
    hashed_passwd: "{{ password_hash }}"
    ssh_authorized_keys:
{% for key in ssh_authorized_keys %}      - "{{ key }}"
{% endfor %}ssh_pwauth: false
"""


class Method(models.TextChoices):
    NONE = "none", "None (the template boots as it is)"
    CUSTOMIZATION = "customization", "vSphere guest customisation (LinuxPrep / Sysprep)"
    CLOUD_INIT = "cloud_init", "cloud-init (user-data and meta-data)"


class Delivery(models.TextChoices):
    GUESTINFO = "guestinfo", "guestinfo (images with cloud-init's VMware datasource)"
    SEED_ISO = "seed_iso", "NoCloud seed ISO in the CD-ROM drive"


class OSFamily(models.TextChoices):
    LINUX = "linux", "Linux (LinuxPrep)"
    WINDOWS = "windows", "Windows (Sysprep)"


class AddressRange(models.Model):
    """Fixed IPv4 addresses for clones: ``first``..``last`` inside ``network``.

    Pools may share a range; an address is held by at most one live VM (unique
    constraint on IPAllocation), and ranges may not overlap one another.
    """

    name = models.SlugField(max_length=64, unique=True)
    network = models.CharField(max_length=43, help_text="e.g. 10.40.0.0/24")
    first = models.GenericIPAddressField(protocol="IPv4", help_text="First address handed out.")
    last = models.GenericIPAddressField(protocol="IPv4", help_text="Last address handed out.")
    gateway = models.GenericIPAddressField(protocol="IPv4", null=True, blank=True)
    dns_servers = models.CharField(max_length=255, blank=True, help_text="Comma-separated, e.g. 10.40.0.2,10.40.0.3")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.first}–{self.last})"

    @property
    def ip_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.network, strict=False)

    @property
    def size(self) -> int:
        return int(ipaddress.IPv4Address(self.last)) - int(ipaddress.IPv4Address(self.first)) + 1

    @property
    def dns(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.dns_servers.split(",") if s.strip())

    def clean(self) -> None:
        errors: dict[str, str] = {}
        try:
            net = ipaddress.IPv4Network(self.network, strict=False)
        except ValueError:
            raise ValidationError({"network": f"'{self.network}' is not an IPv4 network like 10.40.0.0/24."}) from None
        if net.prefixlen > 30:
            errors["network"] = "The network needs room for hosts: use a prefix of /30 or shorter."
        self.network = str(net)
        try:
            first, last = ipaddress.IPv4Address(self.first), ipaddress.IPv4Address(self.last)
        except ValueError:
            raise ValidationError("First and last must be IPv4 addresses.") from None
        usable = (net.network_address, net.broadcast_address)
        for field, addr in (("first", first), ("last", last)):
            if addr not in net:
                errors[field] = f"{addr} is not in {net}."
            elif addr in usable:
                errors[field] = f"{addr} is the network or broadcast address of {net}."
        if "first" not in errors and "last" not in errors and first > last:
            errors["last"] = "The last address must not come before the first."
        if self.gateway:
            gw = ipaddress.IPv4Address(self.gateway)
            if gw not in net:
                errors["gateway"] = f"The gateway {gw} is not in {net}."
            elif first <= gw <= last:
                errors["gateway"] = "The gateway is inside the range: clones would be given its address."
        for server in self.dns:
            try:
                ipaddress.IPv4Address(server)
            except ValueError:
                errors["dns_servers"] = f"'{server}' is not an IPv4 address."
        if not errors:
            for other in AddressRange.objects.exclude(pk=self.pk):
                o_first, o_last = ipaddress.IPv4Address(other.first), ipaddress.IPv4Address(other.last)
                if first <= o_last and o_first <= last:
                    errors["first"] = f"The range overlaps range {other}: one address could go to two VMs."
                    break
        if errors:
            raise ValidationError(errors)


class PoolFirstBoot(models.Model):
    """How a pool's clones initialise themselves on first boot."""

    pool = models.OneToOneField(Pool, on_delete=models.CASCADE, related_name="firstboot")
    method = models.CharField(max_length=16, choices=Method.choices, default=Method.NONE)
    os_family = models.CharField(max_length=8, choices=OSFamily.choices, default=OSFamily.LINUX,
                                 help_text="For guest customisation: LinuxPrep or Sysprep.")
    domain = models.CharField(max_length=253, default="localdomain", help_text="DNS domain of the clones.")
    timezone = models.CharField(max_length=64, default="UTC", help_text="Linux time zone, e.g. Europe/Berlin.")
    windows_timezone = models.PositiveSmallIntegerField(default=85, help_text="Sysprep time zone index (85: GMT).")
    address_range = models.ForeignKey(
        AddressRange, on_delete=models.PROTECT, null=True, blank=True, related_name="pools",
        help_text="Fixed addresses from this range; empty: DHCP.",
    )
    delivery = models.CharField(max_length=16, choices=Delivery.choices, default=Delivery.GUESTINFO,
                                help_text="How cloud-init gets its data.")
    user_data = models.TextField(default=DEFAULT_USER_DATA, blank=True, help_text="cloud-init user-data template.")
    meta_data = models.TextField(
        blank=True,
        help_text="Extra meta-data keys (YAML mapping template); instance-id, local-hostname and network "
        "are always set by vmportal.",
    )
    seed_datastore = models.ForeignKey(
        Datastore, on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        help_text="Where seed ISOs are written (default: the pool's datastore, else the template's).",
    )
    admin_username = models.CharField(max_length=32, default="vmportal",
                                      help_text="Account whose random password first boot sets.")
    authorized_keys = models.TextField(blank=True, help_text="SSH public keys for every clone, one per line.")
    guest_username = models.CharField(
        max_length=64, blank=True,
        help_text="Guest account for VMware Tools guest operations (adds lessees' SSH keys at checkout); "
        "empty: off.",
    )
    guest_password = EncryptedTextField(
        blank=True, help_text="Its password; empty: the clone's own first-boot password."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "pool first boot"

    def __str__(self) -> str:
        return f"{self.pool}: {self.get_method_display()}"

    @property
    def active(self) -> bool:
        return self.method != Method.NONE


class IPAllocation(models.Model):
    """An address of a range held by one VM, from the moment its row exists until it is destroyed;
    or, with no VM, kept back until ``quarantined_until`` (see ``services.release``)."""

    address_range = models.ForeignKey(AddressRange, on_delete=models.PROTECT, related_name="allocations")
    address = models.GenericIPAddressField(protocol="IPv4")
    vm = models.OneToOneField(VM, on_delete=models.CASCADE, null=True, blank=True, related_name="ip_allocation")
    allocated_at = models.DateTimeField(auto_now_add=True)
    quarantined_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["address_range", "address"], name="ipallocation_unique_address"),
            models.CheckConstraint(condition=Q(vm__isnull=False) | Q(quarantined_until__isnull=False),
                                   name="ipallocation_held_or_quarantined"),
        ]

    def __str__(self) -> str:
        return f"{self.address} → {self.vm_id}"


class VMSecret(models.Model):
    """The admin password a clone got at first boot; readable by its lessee and admins."""

    vm = models.OneToOneField(VM, on_delete=models.CASCADE, related_name="firstboot_secret")
    username = models.CharField(max_length=64)
    password = EncryptedTextField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"password of {self.vm_id}"  # never the password


class SeedISO(models.Model):
    """A NoCloud seed ISO on a datastore. The row is written before the upload and deleted
    after the file is, so a crash anywhere leaves a row to clean up, never a stray file."""

    vm = models.ForeignKey(VM, on_delete=models.SET_NULL, null=True, blank=True, related_name="seed_isos")
    vcenter = models.ForeignKey(VCenter, on_delete=models.CASCADE, related_name="+")
    datastore_moid = models.CharField(max_length=255)
    path = models.CharField(max_length=512, help_text="Path inside the datastore.")
    datastore_path = models.CharField(max_length=600, blank=True, help_text="[datastore] path")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.datastore_path or self.path


class SSHKey(models.Model):
    """A user's SSH public key, added to the VMs they check out."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ssh_keys")
    name = models.CharField(max_length=80)
    public_key = models.TextField()
    fingerprint = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["user", "fingerprint"], name="sshkey_unique_per_user"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"


class KeyDelivery(models.Model):
    """Whether the lessee's keys reached the guest of one lease."""

    class State(models.TextChoices):
        PENDING = "pending", "Adding your SSH keys"
        DONE = "done", "Your SSH keys were added"
        FAILED = "failed", "Your SSH keys could not be added"
        SKIPPED = "skipped", "No SSH keys to add"

    # One outcome per lease's keys; failed → done when a worker the reaper declared lost had
    # put the keys in after all (the guest's word beats the reaper's guess).
    TRANSITIONS: dict[str, frozenset[str]] = {
        State.PENDING: frozenset({State.DONE, State.FAILED, State.SKIPPED}),
        State.DONE: frozenset(),
        State.FAILED: frozenset({State.DONE}),
        State.SKIPPED: frozenset(),
    }
    BADGE: dict[str, str] = {State.PENDING: "warn", State.DONE: "ok", State.FAILED: "bad", State.SKIPPED: ""}

    lease = models.OneToOneField("leases.Lease", on_delete=models.CASCADE, related_name="key_delivery")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    detail = models.TextField(blank=True)
    fingerprints = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"keys for lease {self.lease_id}: {self.state}"

    @property
    def badge(self) -> str:
        return self.BADGE[self.state]

    def move_to(self, new: str, **changes: Any) -> None:
        transition(self, new, allowed=self.TRANSITIONS, field="state", **changes)
