"""What vCenter has: connections and the inventory we mirror from them.

Pages and the pool manager read these rows, never vCenter directly; the inventory sync
and the watcher (apps.vsphere) keep them current. Every object is keyed by its vCenter
and managed-object id (moid); moids are opaque and never parsed.
"""

from __future__ import annotations

from typing import Any

from django.db import models

from apps.core.crypto import EncryptedTextField
from apps.core.states import transition


class VCenter(models.Model):
    class Status(models.TextChoices):
        UNKNOWN = "unknown", "Unknown"
        REACHABLE = "reachable", "Reachable"
        UNREACHABLE = "unreachable", "Unreachable"

    # What the last look at vCenter saw (a sync, the watcher); never back to unknown.
    TRANSITIONS: dict[str, frozenset[str]] = {
        Status.UNKNOWN: frozenset({Status.REACHABLE, Status.UNREACHABLE}),
        Status.REACHABLE: frozenset({Status.UNREACHABLE}),
        Status.UNREACHABLE: frozenset({Status.REACHABLE}),
    }
    BADGE: dict[str, str] = {Status.UNKNOWN: "", Status.REACHABLE: "ok", Status.UNREACHABLE: "bad"}

    name = models.SlugField(max_length=64, unique=True)
    host = models.CharField(max_length=255, help_text="Host name or host:port of the vCenter SDK.")
    username = models.CharField(max_length=255)
    # Encrypted at rest; forms never render it back, and its repr is masked.
    password = EncryptedTextField(blank=True)
    insecure = models.BooleanField(
        default=False,
        help_text="Skip TLS certificate verification. Only for labs and simulators.",
    )
    ca_bundle = models.TextField(blank=True, help_text="PEM CA certificate(s) to trust, if not public.")
    thumbprint = models.CharField(
        max_length=128, blank=True, help_text="SHA-256 fingerprint of the server certificate to pin."
    )
    task_limit = models.PositiveIntegerField(
        default=10, help_text="Most clone/destroy tasks run against this vCenter at once."
    )
    enabled = models.BooleanField(default=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UNKNOWN)
    status_reason = models.TextField(blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    last_sync_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "vCenter"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def badge(self) -> str:
        return self.BADGE[self.status]

    def move_to(self, new: str, **changes: Any) -> None:
        transition(self, new, allowed=self.TRANSITIONS, field="status", **changes)


class VCenterObject(models.Model):
    """Common shape of a mirrored inventory object."""

    vcenter = models.ForeignKey(VCenter, on_delete=models.CASCADE, related_name="+")
    moid = models.CharField(max_length=255)
    name = models.CharField(max_length=255)
    synced_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["vcenter", "moid"], name="%(class)s_unique_moid"),
        ]

    def __str__(self) -> str:
        return self.name


class Datacenter(VCenterObject):
    class Meta(VCenterObject.Meta):
        pass


class Cluster(VCenterObject):
    datacenter = models.ForeignKey(Datacenter, on_delete=models.CASCADE, related_name="clusters")
    resource_pool_moid = models.CharField(max_length=255, blank=True)

    class Meta(VCenterObject.Meta):
        pass


class Datastore(VCenterObject):
    datacenter = models.ForeignKey(Datacenter, on_delete=models.CASCADE, related_name="datastores")
    capacity_bytes = models.BigIntegerField(null=True, blank=True)
    free_bytes = models.BigIntegerField(null=True, blank=True)
    accessible = models.BooleanField(default=True)

    class Meta(VCenterObject.Meta):
        pass


class Network(VCenterObject):
    datacenter = models.ForeignKey(Datacenter, on_delete=models.CASCADE, related_name="networks")

    class Meta(VCenterObject.Meta):
        pass


class Host(VCenterObject):
    datacenter = models.ForeignKey(Datacenter, on_delete=models.CASCADE, related_name="hosts")
    cluster = models.ForeignKey(
        Cluster, on_delete=models.SET_NULL, null=True, blank=True, related_name="hosts"
    )
    connection_state = models.CharField(max_length=32, default="connected")
    in_maintenance = models.BooleanField(default=False)
    config_issues = models.PositiveIntegerField(default=0)
    overall_status = models.CharField(max_length=16, default="gray")
    cpu_capacity_mhz = models.PositiveIntegerField(null=True, blank=True)
    memory_capacity_mb = models.PositiveIntegerField(null=True, blank=True)
    # Logical CPUs: the most vCPUs a VM on this host can have.
    cpu_threads = models.PositiveIntegerField(null=True, blank=True)
    # None means vCenter reported no quick stats: the load is unknown, never zero.
    cpu_usage_mhz = models.PositiveIntegerField(null=True, blank=True)
    memory_usage_mb = models.PositiveIntegerField(null=True, blank=True)
    datastores = models.ManyToManyField(Datastore, blank=True, related_name="hosts")
    networks = models.ManyToManyField(Network, blank=True, related_name="hosts")

    class Meta(VCenterObject.Meta):
        pass

    @property
    def cpu_percent(self) -> float | None:
        if self.cpu_usage_mhz is None or not self.cpu_capacity_mhz:
            return None
        return 100.0 * self.cpu_usage_mhz / self.cpu_capacity_mhz

    @property
    def memory_percent(self) -> float | None:
        if self.memory_usage_mb is None or not self.memory_capacity_mb:
            return None
        return 100.0 * self.memory_usage_mb / self.memory_capacity_mb


class HostLoadSample(models.Model):
    """Load history for charts; old rows are pruned by the inventory sync."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="load_samples")
    at = models.DateTimeField(db_index=True)
    cpu_usage_mhz = models.PositiveIntegerField(null=True, blank=True)
    memory_usage_mb = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["host", "-at"])]

    def __str__(self) -> str:
        return f"{self.host} @ {self.at:%Y-%m-%d %H:%M:%S}"


class Folder(VCenterObject):
    datacenter = models.ForeignKey(Datacenter, on_delete=models.CASCADE, related_name="folders")
    path = models.CharField(max_length=1024, help_text="Inventory path, e.g. DC0/vm/vmportal.")
    purge_unknown = models.BooleanField(
        default=False,
        help_text="Destroy VMs in this folder that no pool knows (never sub-folders).",
    )
    purge_allowlist = models.JSONField(
        default=list, blank=True, help_text="VM names in this folder that purge never touches."
    )

    class Meta(VCenterObject.Meta):
        pass


class InventoryVM(VCenterObject):
    """A VM or template as vCenter last reported it (observed state, not our intent)."""

    datacenter = models.ForeignKey(Datacenter, on_delete=models.CASCADE, related_name="vms")
    folder = models.ForeignKey(Folder, on_delete=models.SET_NULL, null=True, blank=True)
    host = models.ForeignKey(Host, on_delete=models.SET_NULL, null=True, blank=True, related_name="vms")
    path = models.CharField(max_length=1024, blank=True)
    power_state = models.CharField(max_length=16, blank=True)
    is_template = models.BooleanField(default=False)
    tools_status = models.CharField(max_length=32, blank=True)
    guest_ip = models.CharField(max_length=64, blank=True)
    guest_hostname = models.CharField(max_length=255, blank=True)
    instance_uuid = models.CharField(max_length=64, blank=True)
    # Value of our ownership marker in extraConfig; empty for VMs we did not create.
    marker = models.CharField(max_length=128, blank=True, db_index=True)

    class Meta(VCenterObject.Meta):
        verbose_name = "inventory VM"
