"""Templates, pools and the VMs we clone for them.

A VM row is written before its clone is started in vSphere, so a crash between the two
leaves a row to reconcile rather than an unknown VM (no leaks).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import F, Q

from apps.core.states import transition
from apps.inventory.models import Cluster, Datastore, Folder, Host, Network, VCenter

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# \Z, not $: "$" also matches before a trailing newline, which would be stored.
DOMAIN_RE = rf"^(?=.{{1,200}}\Z){_LABEL}(\.{_LABEL})*\Z"
ALIAS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # used with fullmatch

# What vSphere 8 allows one VM at most; a cluster's hosts may offer less (Pool.clean).
MAX_VCPUS = 768
MAX_MEMORY_MB = 24 * 1024 * 1024
MIN_MEMORY_MB = 128
MAX_BOOT_TIMEOUT = timedelta(hours=24)
MAX_TRIES = 100


def validate_pool_size(value: int) -> None:
    if value > settings.VMPORTAL_MAX_POOL_SIZE:
        raise ValidationError(f"Ensure this value is between 0 and {settings.VMPORTAL_MAX_POOL_SIZE} "
                              "(VMPORTAL_MAX_POOL_SIZE).", code="max_value")


def validate_positive_duration(value: timedelta) -> None:
    if value is not None and value <= timedelta(0):
        raise ValidationError("Give a positive duration, e.g. 00:10:00 for ten minutes.", code="min_value")


def validate_lease_duration(value: timedelta) -> None:
    validate_positive_duration(value)
    hours = settings.VMPORTAL_MAX_LEASE_HOURS
    if value is not None and value > timedelta(hours=hours):
        raise ValidationError(f"Ensure this is at most {hours} hours (VMPORTAL_MAX_LEASE_HOURS).", code="max_value")


def validate_boot_timeout(value: timedelta) -> None:
    validate_positive_duration(value)
    if value is not None and value > MAX_BOOT_TIMEOUT:
        raise ValidationError("Ensure this is at most 24:00:00.", code="max_value")


class TemplateStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DEPLOYING = "deploying", "Deploying"
    PREPARING = "preparing", "Preparing"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    # Copies only: an automatic copy no pool or VM needs any more, being destroyed.
    REMOVING = "removing", "Removing"


TEMPLATE_TRANSITIONS: dict[str, frozenset[str]] = {
    TemplateStatus.PENDING: frozenset({TemplateStatus.DEPLOYING, TemplateStatus.PREPARING, TemplateStatus.FAILED}),
    TemplateStatus.DEPLOYING: frozenset({TemplateStatus.PREPARING, TemplateStatus.FAILED}),
    TemplateStatus.PREPARING: frozenset({TemplateStatus.READY, TemplateStatus.FAILED}),
    TemplateStatus.READY: frozenset({TemplateStatus.PREPARING, TemplateStatus.FAILED}),
    TemplateStatus.FAILED: frozenset({TemplateStatus.PENDING, TemplateStatus.DEPLOYING, TemplateStatus.PREPARING}),
}
# CSS class of each status's badge (templates and their copies).
TEMPLATE_BADGE: dict[str, str] = {
    TemplateStatus.PENDING: "warn", TemplateStatus.DEPLOYING: "warn", TemplateStatus.PREPARING: "warn",
    TemplateStatus.READY: "ok", TemplateStatus.FAILED: "bad", TemplateStatus.REMOVING: "",
}
# A copy also goes from ready (or failed) to removing: an unused automatic copy. A removal
# that fails leaves it failed, and a failed copy a pool needs again is prepared anew.
COPY_TRANSITIONS: dict[str, frozenset[str]] = {
    **TEMPLATE_TRANSITIONS,
    TemplateStatus.READY: TEMPLATE_TRANSITIONS[TemplateStatus.READY] | {TemplateStatus.REMOVING},
    TemplateStatus.FAILED: TEMPLATE_TRANSITIONS[TemplateStatus.FAILED] | {TemplateStatus.REMOVING},
    TemplateStatus.REMOVING: frozenset({TemplateStatus.FAILED}),
}


def copy_vm_name(template_name: str, cluster_name: str, datastore_name: str | None = None) -> str:
    """The vSphere name of a template's copy: the same on every worker and installation, so
    concurrent copiers meet on vSphere's DuplicateName instead of making two."""
    return "-".join(filter(None, (template_name, cluster_name, datastore_name)))[:80]


class Template(models.Model):
    class Source(models.TextChoices):
        REGISTERED = "registered", "Existing vSphere template"
        OVF = "ovf", "OVF/OVA"
        DERIVED = "derived", "Derived from another template"

    vcenter = models.ForeignKey(VCenter, on_delete=models.PROTECT, related_name="templates")
    name = models.SlugField(max_length=80)
    os_name = models.CharField("OS", max_length=120, blank=True, help_text="e.g. Debian 12")
    description = models.TextField(blank=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.REGISTERED)
    inventory_path = models.CharField(
        max_length=1024, blank=True, help_text="e.g. DC0/vm/Templates/debian-12"
    )
    ovf_url = models.URLField(max_length=1024, blank=True)
    parent = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True)
    status = models.CharField(max_length=16, choices=TemplateStatus.choices, default=TemplateStatus.PENDING)
    status_reason = models.TextField(blank=True)
    status_changed_at = models.DateTimeField(auto_now_add=True)
    # Upload progress of an OVF/OVA deploy (0-100); meaningful while status is deploying.
    progress = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["vcenter", "name"], name="template_unique_name"),
        ]

    def __str__(self) -> str:
        return self.name

    def move_to(self, new: str, **changes) -> None:
        transition(self, new, allowed=TEMPLATE_TRANSITIONS, field="status", **changes)

    @property
    def badge(self) -> str:
        return TEMPLATE_BADGE[self.status]


class TemplateCopy(models.Model):
    """A template's copy in one cluster (on one datastore, or where vSphere put it),
    prepared for linked clones.

    The unique (template, cluster, datastore) row is how concurrent preparers de-duplicate:
    the one whose INSERT wins prepares, the others wait for its status to change. A copy
    without a datastore (registered, or copied by an admin) serves every pool of its
    cluster; one made for a pool's datastore serves the pools on that datastore.
    """

    template = models.ForeignKey(Template, on_delete=models.CASCADE, related_name="copies")
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="+")
    datastore = models.ForeignKey(Datastore, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    # Made by the pool manager because a pool needed it: removed again once none does.
    automatic = models.BooleanField(default=False)
    moid = models.CharField(max_length=255, blank=True)
    snapshot_moid = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=16, choices=TemplateStatus.choices, default=TemplateStatus.PENDING)
    status_reason = models.TextField(blank=True)
    status_changed_at = models.DateTimeField(auto_now_add=True)
    progress = models.PositiveSmallIntegerField(default=0)

    class Meta:
        constraints = [
            # Two constraints, as NULLs are distinct in a plain unique index (and SQLite has
            # no NULLS NOT DISTINCT): one copy per cluster without a datastore, one per datastore.
            models.UniqueConstraint(fields=["template", "cluster"], condition=Q(datastore__isnull=True),
                                    name="templatecopy_unique_cluster"),
            models.UniqueConstraint(fields=["template", "cluster", "datastore"],
                                    condition=Q(datastore__isnull=False), name="templatecopy_unique_datastore"),
        ]

    def __str__(self) -> str:
        where = f"{self.cluster}/{self.datastore}" if self.datastore_id else f"{self.cluster}"
        return f"{self.template} in {where}"

    @property
    def where(self) -> str:
        return f"{self.cluster.name} / {self.datastore.name}" if self.datastore_id else self.cluster.name

    @property
    def vm_name(self) -> str:
        return copy_vm_name(self.template.name, self.cluster.name, self.datastore.name if self.datastore_id else None)

    def move_to(self, new: str, **changes) -> None:
        transition(self, new, allowed=COPY_TRANSITIONS, field="status", **changes)

    @property
    def badge(self) -> str:
        return TEMPLATE_BADGE[self.status]


class Pool(models.Model):
    class Health(models.TextChoices):
        OK = "ok", "OK"
        DEGRADED = "degraded", "Degraded"  # temporary: vCenter unreachable, retries pending
        FAILING = "failing", "Failing"  # permanent: needs an admin (template gone, disk full)

    # Failing ends only by an admin's reset; degraded ends by itself (a clone that works,
    # vCenter answering again). Staying degraded with a new reason or retry is no move.
    HEALTH_TRANSITIONS: dict[str, frozenset[str]] = {
        Health.OK: frozenset({Health.DEGRADED, Health.FAILING}),
        Health.DEGRADED: frozenset({Health.OK, Health.FAILING}),
        Health.FAILING: frozenset({Health.OK}),
    }
    HEALTH_BADGE: dict[str, str] = {Health.OK: "ok", Health.DEGRADED: "warn", Health.FAILING: "bad"}

    name = models.SlugField(max_length=64, unique=True)
    description = models.CharField(max_length=255, blank=True)
    template = models.ForeignKey(Template, on_delete=models.PROTECT, related_name="pools")
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="pools")
    folder = models.ForeignKey(Folder, on_delete=models.PROTECT, null=True, blank=True, related_name="pools")
    datastore = models.ForeignKey(Datastore, on_delete=models.PROTECT, null=True, blank=True)
    network = models.ForeignKey(Network, on_delete=models.SET_NULL, null=True, blank=True)
    size = models.PositiveIntegerField(default=0, help_text="Ready VMs to keep.", validators=[validate_pool_size])
    # Automatic sizing (apps/pools/autosize.py): the pool manager writes size itself, within
    # [min_size, max_size], from the pool's recent checkouts; off, size is the admin's alone.
    autosize = models.BooleanField("automatic size", default=False,
                                   help_text="Let the pool manager set the size from recent checkouts.")
    min_size = models.PositiveIntegerField(default=0, validators=[validate_pool_size],
                                           help_text="Smallest size automatic sizing sets.")
    max_size = models.PositiveIntegerField(default=0, validators=[validate_pool_size],
                                           help_text="Largest size automatic sizing sets.")
    linked_clones = models.BooleanField(default=True)
    cpus = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(MAX_VCPUS)])
    memory_mb = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(MIN_MEMORY_MB), MaxValueValidator(MAX_MEMORY_MB)])
    ready_ttl = models.DurationField(
        null=True, blank=True, help_text="Recycle ready VMs older than this (empty: never).",
        validators=[validate_positive_duration],
    )
    lease_lifetime = models.DurationField(default=timedelta(hours=2), validators=[validate_lease_duration])
    lease_max_lifetime = models.DurationField(default=timedelta(hours=24), validators=[validate_lease_duration])
    boot_timeout = models.DurationField(default=timedelta(minutes=10), validators=[validate_boot_timeout])
    max_tries = models.PositiveSmallIntegerField(
        default=3, validators=[MinValueValidator(1), MaxValueValidator(MAX_TRIES)])
    enabled = models.BooleanField(default=True)
    balance_hosts = models.BooleanField(
        default=False,
        help_text="At checkout, move a VM whose host is overloaded to a much less loaded host of the "
                  "cluster (vMotion, after the lease is answered).",
    )
    health = models.CharField(max_length=16, choices=Health.choices, default=Health.OK)
    health_reason = models.TextField(blank=True)
    consecutive_failures = models.PositiveSmallIntegerField(default=0)
    retry_at = models.DateTimeField(null=True, blank=True, help_text="No clones before this (backoff).")
    # Set while the pool is degraded only because its vCenter does not answer: such a pool
    # is not failing, retries soon and returns to OK by itself once vCenter answers.
    unreachable_since = models.DateTimeField(null=True, blank=True)
    # vmpooler's per-pool domain: the API gives hostnames as <name>.<domain>.
    domain = models.CharField(
        max_length=200, blank=True, validators=[RegexValidator(DOMAIN_RE, "Not a DNS domain, e.g. vm.example.com.")],
        help_text="DNS domain of this pool's VMs in API answers (empty: VMPORTAL_API_DOMAIN).",
    )
    # vmpooler's alias: more names this pool answers to in the API. A name several pools
    # share is served by one of them, picked at random in proportion to alias_weight.
    aliases = models.CharField(
        max_length=255, blank=True, help_text="Comma-separated names, e.g. debian,debian-latest."
    )
    alias_weight = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1)],
        help_text="Share of checkouts by alias this pool gets among the pools with the same alias.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        # The invariants every path (forms, admin, APIs, importer, a shell) must keep.
        constraints = [
            models.CheckConstraint(condition=Q(cpus__isnull=True) | Q(cpus__gte=1, cpus__lte=MAX_VCPUS),
                                   name="pool_cpus_range"),
            models.CheckConstraint(
                condition=Q(memory_mb__isnull=True) | Q(memory_mb__gte=MIN_MEMORY_MB, memory_mb__lte=MAX_MEMORY_MB),
                name="pool_memory_range"),
            models.CheckConstraint(condition=Q(ready_ttl__isnull=True) | Q(ready_ttl__gt=timedelta(0)),
                                   name="pool_ready_ttl_positive"),
            models.CheckConstraint(condition=Q(lease_lifetime__gt=timedelta(0)), name="pool_lease_lifetime_positive"),
            models.CheckConstraint(condition=Q(lease_max_lifetime__gte=F("lease_lifetime")),
                                   name="pool_lease_max_at_least_lifetime"),
            models.CheckConstraint(condition=Q(boot_timeout__gt=timedelta(0)), name="pool_boot_timeout_positive"),
            models.CheckConstraint(condition=Q(max_tries__gte=1), name="pool_max_tries_positive"),
            models.CheckConstraint(condition=Q(autosize=False) | Q(min_size__lte=F("max_size"), max_size__gte=1),
                                   name="pool_autosize_bounds"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def health_badge(self) -> str:
        return self.HEALTH_BADGE[self.health]

    def move_health(self, new: str, **changes: Any) -> None:
        """Health through its map; ``new`` may be the health it has (only ``changes`` written)."""
        transition(self, new, allowed=self.HEALTH_TRANSITIONS, field="health", stay=True, **changes)

    @property
    def alias_list(self) -> list[str]:
        return [a for a in (part.strip() for part in self.aliases.split(",")) if a]

    def clean(self) -> None:
        errors = {}
        if self.lease_lifetime and self.lease_max_lifetime and self.lease_lifetime > self.lease_max_lifetime:
            errors["lease_max_lifetime"] = "The maximum lifetime must be at least the default lifetime."
        if self.cluster_id and self.template_id and self.cluster.vcenter_id != self.template.vcenter_id:
            errors["cluster"] = "The cluster and the template must be on the same vCenter."
        bad = [a for a in self.alias_list if not ALIAS_RE.fullmatch(a) or a == self.name]
        taken = Pool.objects.filter(name__in=self.alias_list).exclude(pk=self.pk).values_list("name", flat=True)
        if bad or taken:
            errors["aliases"] = (f"Not usable as an alias: {', '.join(sorted({*bad, *taken}))} "
                                 "(letters, digits, '.', '_', '-'; not this or another pool's name).")
        if self.autosize and self.max_size < 1:
            errors["max_size"] = "Automatic sizing needs a largest size of at least 1."
        elif self.min_size > self.max_size:
            errors["min_size"] = f"The smallest size must be at most the largest ({self.max_size})."
        if self.datastore_id and self.cluster_id and not self.datastore.hosts.filter(cluster=self.cluster_id).exists():
            errors["datastore"] = f"No host of cluster {self.cluster} mounts datastore {self.datastore}."
        if self.cluster_id:
            errors.update(self._placement_errors())
        if errors:
            raise ValidationError(errors)

    def _placement_errors(self) -> dict[str, str]:
        """Folder, datastore and network on the cluster's vCenter; vCPUs and memory within its largest host."""
        errors = {}
        vcenter_id = self.cluster.vcenter_id
        for name in ("folder", "datastore", "network"):
            obj = getattr(self, name) if getattr(self, f"{name}_id") else None
            if obj is not None and obj.vcenter_id != vcenter_id:
                errors[name] = f"{obj} is not on {self.cluster.vcenter}, where cluster {self.cluster} is."
        if "network" not in errors and self.network_id and not self.network.hosts.filter(
                cluster=self.cluster_id).exists():
            errors["network"] = f"No host of cluster {self.cluster} is connected to network {self.network}."
        if self.cpus:
            most = Host.objects.filter(cluster=self.cluster_id).aggregate(m=models.Max("cpu_threads"))["m"]
            if most and self.cpus > most:
                errors["cpus"] = (f"Ensure this value is between 1 and {most}: the largest host of cluster "
                                  f"{self.cluster} has {most} logical CPUs.")
        if self.memory_mb:
            largest = Host.objects.filter(cluster=self.cluster_id).aggregate(m=models.Max("memory_capacity_mb"))["m"]
            if largest and self.memory_mb > largest:
                errors["memory_mb"] = (f"Ensure this value is between {MIN_MEMORY_MB} and {largest} MB: the largest "
                                       f"host of cluster {self.cluster} has {largest} MB.")
        return errors


class VMState(models.TextChoices):
    CLONING = "cloning", "Cloning"
    BOOTING = "booting", "Booting"
    READY = "ready", "Ready"
    LEASED = "leased", "Leased"
    DESTROYING = "destroying", "Destroying"
    DESTROYED = "destroyed", "Destroyed"
    FAILED = "failed", "Failed"


VM_TRANSITIONS: dict[str, frozenset[str]] = {
    VMState.CLONING: frozenset({VMState.BOOTING, VMState.FAILED, VMState.DESTROYING}),
    VMState.BOOTING: frozenset({VMState.READY, VMState.FAILED, VMState.DESTROYING}),
    VMState.READY: frozenset({VMState.LEASED, VMState.DESTROYING}),
    VMState.LEASED: frozenset({VMState.DESTROYING}),
    # A failed destroy is retried; a failed clone is cleaned up before its slot is retried.
    VMState.DESTROYING: frozenset({VMState.DESTROYED, VMState.FAILED}),
    VMState.FAILED: frozenset({VMState.DESTROYING, VMState.DESTROYED}),
    VMState.DESTROYED: frozenset(),
}
VM_BADGE: dict[str, str] = {
    VMState.CLONING: "warn", VMState.BOOTING: "warn", VMState.READY: "ok", VMState.LEASED: "ok",
    VMState.DESTROYING: "", VMState.DESTROYED: "", VMState.FAILED: "bad",
}

LIVE_STATES = (VMState.CLONING, VMState.BOOTING, VMState.READY, VMState.LEASED)


class VMQuerySet(models.QuerySet):
    def ready(self):
        return self.filter(state=VMState.READY)

    def in_flight(self):
        return self.filter(state__in=(VMState.CLONING, VMState.BOOTING))

    def live(self):
        return self.filter(state__in=LIVE_STATES)


class VM(models.Model):
    vcenter = models.ForeignKey(VCenter, on_delete=models.PROTECT, related_name="+")
    # Indexed by vm_checkout_order, whose first column it is (see Meta.indexes).
    pool = models.ForeignKey(Pool, on_delete=models.SET_NULL, null=True, blank=True, related_name="vms",
                             db_index=False)
    template = models.ForeignKey(Template, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    name = models.CharField(max_length=80)
    state = models.CharField(max_length=16, choices=VMState.choices, default=VMState.CLONING)
    state_reason = models.TextField(blank=True)
    state_changed_at = models.DateTimeField(auto_now_add=True)
    moid = models.CharField(max_length=255, blank=True)
    instance_uuid = models.CharField(max_length=64, blank=True)
    host = models.ForeignKey(Host, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # The clone target when the slot was claimed: a pool's cluster change drains the VMs
    # made for the old one (host may be unknown until the clone lands, or change by DRS).
    cluster = models.ForeignKey(Cluster, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # A checkout's move to a less loaded host (Pool.balance_hosts, apps.pools.balance): the
    # target while the vMotion runs (also what the per-vCenter migration limit counts), and
    # how the last move ended, for the lease page.
    moving_to = models.ForeignKey(Host, on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
                                  db_index=False)
    moving_since = models.DateTimeField(null=True, blank=True)
    move_note = models.CharField(max_length=500, blank=True)
    ip_address = models.CharField(max_length=64, blank=True)
    hostname = models.CharField(max_length=255, blank=True)
    tries = models.PositiveSmallIntegerField(default=0)
    # Cloned for one on-demand request, beyond the pool's size: the pool manager neither
    # counts nor drains it, and checkout never hands it to anyone but that requester.
    on_demand = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    destroyed_at = models.DateTimeField(null=True, blank=True)

    objects = VMQuerySet.as_manager()

    class Meta:
        verbose_name = "VM"
        ordering = ["-created_at"]
        constraints = [
            # vSphere allows duplicate names in some cases; we never do for live VMs.
            models.UniqueConstraint(
                fields=["vcenter", "name"],
                condition=~Q(state=VMState.DESTROYED),
                name="vm_unique_live_name",
            ),
        ]
        # Every change of state writes a new row version into each of these (state is
        # indexed, so no update is HOT): each one costs every checkout, clone and purge.
        # A (pool) or (pool, state) index of its own would repeat vm_checkout_order's prefix.
        indexes = [
            # Checkout takes the oldest ready VM of a pool without sorting them all; any
            # query by pool, or by pool and state, uses its first columns.
            models.Index(fields=["pool", "state", "ready_at", "id"], name="vm_checkout_order"),
            # Almost every VM is moving nowhere: only those that are need an entry.
            models.Index(fields=["moving_to"], condition=Q(moving_to__isnull=False), name="vm_moving_to"),
        ]

    def __str__(self) -> str:
        return self.name

    def move_to(self, new: str, **changes) -> None:
        transition(self, new, allowed=VM_TRANSITIONS, **changes)

    @property
    def badge(self) -> str:
        return VM_BADGE[self.state]


class TemplateBuild(models.Model):
    """A VM an admin turns into a new template: a build VM cloned from a template (derive),
    captured back once the admin's work on it is done, or a copy of a leased VM (capture).

    The new template's row exists from the start (status pending/preparing), so its name
    is reserved and it shows on the templates page while the build runs.
    """

    class Kind(models.TextChoices):
        DERIVE = "derive", "Derived from a template"
        CAPTURE_VM = "capture_vm", "Captured from a VM"

    class Status(models.TextChoices):
        CLONING = "cloning", "Cloning"
        READY = "ready", "Ready for your work"  # derive only: the build VM is on
        CAPTURING = "capturing", "Capturing"
        CAPTURED = "captured", "Captured"
        FAILED = "failed", "Failed"
        DISCARDING = "discarding", "Discarding"
        DISCARDED = "discarded", "Discarded"

    TRANSITIONS: dict[str, frozenset[str]] = {
        Status.CLONING: frozenset({Status.READY, Status.FAILED}),
        Status.READY: frozenset({Status.CAPTURING, Status.DISCARDING, Status.FAILED}),
        # A capture builds the template; a failed one may be captured again or discarded.
        Status.CAPTURING: frozenset({Status.CAPTURED, Status.FAILED}),
        Status.FAILED: frozenset({Status.CAPTURING, Status.DISCARDING}),
        # A discard whose worker died fails, so the admin can discard it again.
        Status.DISCARDING: frozenset({Status.DISCARDED, Status.FAILED}),
        Status.CAPTURED: frozenset(),
        Status.DISCARDED: frozenset(),
    }
    BADGE: dict[str, str] = {
        Status.CLONING: "warn", Status.READY: "ok", Status.CAPTURING: "warn", Status.CAPTURED: "ok",
        Status.FAILED: "bad", Status.DISCARDING: "warn", Status.DISCARDED: "",
    }

    kind = models.CharField(max_length=16, choices=Kind.choices)
    vcenter = models.ForeignKey(VCenter, on_delete=models.PROTECT, related_name="+")
    template = models.ForeignKey(Template, on_delete=models.SET_NULL, null=True, blank=True,
                                 related_name="builds", help_text="The template being made.")
    template_name = models.CharField(max_length=80)
    source_template = models.ForeignKey(Template, on_delete=models.SET_NULL, null=True, blank=True,
                                        related_name="derived_builds")
    source_vm = models.ForeignKey("VM", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="+")
    vm_name = models.CharField(max_length=80)
    moid = models.CharField(max_length=255, blank=True)
    ip_address = models.CharField(max_length=64, blank=True)
    hostname = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CLONING)
    status_reason = models.TextField(blank=True)
    created_by = models.ForeignKey("auth.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"build of {self.template_name} ({self.vm_name})"

    @property
    def active(self) -> bool:
        return self.status in (self.Status.CLONING, self.Status.READY, self.Status.CAPTURING, self.Status.DISCARDING)

    @property
    def badge(self) -> str:
        return self.BADGE[self.status]

    def move_to(self, new: str, **changes) -> None:
        transition(self, new, allowed=self.TRANSITIONS, field="status", **changes)


class Installation(models.Model):
    """This installation's identity: one row, read through ``apps.pools.instance``.

    Its id is written into every clone's ownership marker, and purge destroys only VMs
    carrying it. It lives in the database, not in a file, so every web and worker host of
    one installation agrees on it, and two installations sharing a vCenter folder differ.
    """

    instance_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(pk=1), name="pools_installation_is_a_singleton")]

    def __str__(self) -> str:
        return self.instance_id


class PoolSample(models.Model):
    """A pool's VM counts at one moment, for its history chart: written by the pool manager's
    cycle at most once a minute and pruned after a week and a day (apps/pools/history.py)."""

    pool = models.ForeignKey(Pool, on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField(db_index=True)  # the prune deletes by age alone
    ready = models.PositiveIntegerField(default=0)
    booting = models.PositiveIntegerField(default=0, help_text="Cloning or booting for the pool's size.")
    leased = models.PositiveIntegerField(default=0)
    on_demand = models.PositiveIntegerField(default=0, help_text="Cloning or booting for on-demand requests.")

    class Meta:
        indexes = [models.Index(fields=["pool", "at"])]

    def __str__(self) -> str:
        return f"{self.pool_id} @ {self.at:%Y-%m-%d %H:%M}"


WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # datetime.weekday() order


def weekdays_label(days: str) -> str:
    """"0123456" → "Mon-Sun", "024" → "Mon,Wed,Fri", "01256" → "Mon-Tue,Thu-Sun"."""
    numbers = sorted({int(d) for d in days})
    runs: list[list[int]] = []
    for n in numbers:
        if runs and runs[-1][-1] == n - 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ",".join(WEEKDAYS[r[0]] if len(r) == 1 else f"{WEEKDAYS[r[0]]}-{WEEKDAYS[r[-1]]}" for r in runs)


class PoolSchedule(models.Model):
    """A window of the week in which an automatic pool keeps at least ``min_size`` VMs,
    e.g. Mon-Fri 08:00-18:00 at least 10 (apps/pools/autosize.py). Times are in TIME_ZONE;
    a window over midnight is two entries."""

    pool = models.ForeignKey(Pool, on_delete=models.CASCADE, related_name="schedules")
    # Days as digits of datetime.weekday(), Monday 0: "01234" is Monday to Friday. A string,
    # not an array, so the SQLite demo stores it too.
    weekdays = models.CharField(max_length=7, validators=[RegexValidator(r"^[0-6]{1,7}\Z", "Pick at least one day.")])
    start = models.TimeField(help_text="HH:MM, in the portal's time zone.")
    end = models.TimeField(help_text="HH:MM, after the start; the window ends before it.")
    min_size = models.PositiveIntegerField(validators=[validate_pool_size],
                                           help_text="Smallest size during the window.")

    class Meta:
        ordering = ["start", "weekdays", "pk"]
        constraints = [
            models.CheckConstraint(condition=Q(start__lt=F("end")), name="poolschedule_start_before_end"),
        ]

    def __str__(self) -> str:
        return f"{self.label} at least {self.min_size}"

    @property
    def label(self) -> str:
        return f"{weekdays_label(self.weekdays)} {self.start:%H:%M}-{self.end:%H:%M}"

    def clean(self) -> None:
        errors = {}
        if self.start is not None and self.end is not None and self.start >= self.end:
            errors["end"] = ("The end must be after the start (a window over midnight is two entries, "
                             "e.g. 22:00-23:59 and 00:00-06:00 the next day).")
        # The inline forms (pool page, Django admin) give the pool being edited, with the
        # bounds just posted, not the stored ones.
        pool = self.pool if self.pool_id else None
        if pool is not None and self.min_size is not None:
            if self.min_size > pool.max_size:
                errors["min_size"] = (f"At most the pool's largest size ({pool.max_size}); schedules apply to "
                                      "pools with automatic sizing.")
            elif self.min_size < pool.min_size:
                errors["min_size"] = f"At least the pool's smallest size ({pool.min_size}), or the entry does nothing."
        if errors:
            raise ValidationError(errors)
