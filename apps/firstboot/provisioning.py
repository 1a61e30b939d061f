"""First boot of clones, the clone-time work: addresses, secrets, seeds, readiness.

apps.pools calls in through apps.pools.guest_setup (this module, registered by
FirstBootConfig.ready) at five points, each a single line there:

* ``allocate_addresses``  in claim_slots, inside the transaction that creates the VM rows
* ``plan_clones``         in clone_batch, before the clone specs are built (DB only)
* ``upload_seeds`` / ``discard_seeds``  around clone_many, on its vSphere session
* ``expectations`` / ``finish_usable``  in check_boots: readiness, then ISO and user-data cleanup
* ``release``             once the VM is destroyed

What lessees get (their VM's password, their SSH keys) is apps.firstboot.access, above leases.
Nothing here logs or audits a password, a hash or user-data.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from apps.audit import services as audit
from apps.core.states import StaleState
from apps.firstboot import seed
from apps.firstboot.models import (
    AddressRange,
    Delivery,
    IPAllocation,
    Method,
    OSFamily,
    PoolFirstBoot,
    SeedISO,
    VMSecret,
)
from apps.firstboot.secrets import new_password, sha512_crypt
from apps.firstboot.seed import FirstBootError
from apps.inventory.models import Datastore, Host
from apps.pools.models import VM, Pool, VMState
from apps.vsphere import operations as ops
from apps.vsphere.errors import VSphereError
from apps.vsphere.session import Connection
from apps.vsphere.types import Customization, GuestExpectation, GuestInfo

log = logging.getLogger(__name__)

SEED_FOLDER = "vmportal-seeds"
# How long an exhausted pool waits before it looks for free addresses again.
EXHAUSTED_RETRY = timedelta(seconds=30)

__all__ = ["FirstBootError"]


def config_for(pool: Pool | int) -> PoolFirstBoot | None:
    """The pool's first-boot configuration, or None when it has none (method none)."""
    pool_id = pool if isinstance(pool, int) else pool.pk
    cfg = PoolFirstBoot.objects.select_related("address_range", "seed_datastore").filter(pool_id=pool_id).first()
    return cfg if cfg is not None and cfg.active else None


# ---------------------------------------------------------------- addresses


class RangeExhausted(FirstBootError):
    permanent = False


def _take_addresses(rng: AddressRange, count: int) -> list[str]:
    """The ``count`` lowest free addresses of a locked range (fewer when it runs out)."""
    # Addresses of VMs that are gone are free, whichever path destroyed them, and kept-back
    # ones once their quarantine is over.
    IPAllocation.objects.filter(address_range=rng, vm__state=VMState.DESTROYED).delete()
    IPAllocation.objects.filter(address_range=rng, vm__isnull=True, quarantined_until__lte=timezone.now()).delete()
    taken = {int(ipaddress.IPv4Address(a)) for a in rng.allocations.values_list("address", flat=True)}
    first, last = int(ipaddress.IPv4Address(rng.first)), int(ipaddress.IPv4Address(rng.last))
    free: list[str] = []
    for n in range(first, last + 1):
        if n not in taken:
            free.append(str(ipaddress.IPv4Address(n)))
            if len(free) == count:
                break
    return free


def allocate_addresses(pool: Pool, vms: list[VM]) -> list[VM]:
    """Give each new VM row an address of the pool's range, in the caller's transaction.

    Returns the VMs that got one; rows beyond what the range can hold are deleted again
    (nothing refers to them yet) and the pool is told why, so its admin can act. A no-op
    for pools without fixed addresses.
    """
    cfg = config_for(pool)
    if cfg is None or cfg.address_range_id is None or not vms:
        return vms
    # The range row lock serialises allocation across pools, workers and machines; the
    # unique constraint would refuse a second holder of an address anyway.
    rng = AddressRange.objects.select_for_update(no_key=True).get(pk=cfg.address_range_id)
    addresses = _take_addresses(rng, len(vms))
    kept, surplus = vms[: len(addresses)], vms[len(addresses) :]
    IPAllocation.objects.bulk_create(
        IPAllocation(address_range=rng, address=address, vm=vm) for vm, address in zip(kept, addresses, strict=True)
    )
    if surplus:
        VM.objects.filter(pk__in=[vm.pk for vm in surplus]).delete()
        reason = (
            f"Address range {rng.name} is exhausted: all {rng.size} addresses ({rng.first}–{rng.last}) are held by "
            "live VMs (or kept back after clones that failed unseen, until no such clone can appear). Widen the "
            "range, give the pool another one, or make the pool smaller."
        )
        if _degrade(pool, reason, retry_at=timezone.now() + EXHAUSTED_RETRY):
            audit.record("pool.addresses_exhausted", target=pool, pool=pool, message=reason)
    return kept


def _degrade(pool: Pool, reason: str, *, retry_at: datetime) -> bool:
    """Degrade ``pool`` for ``reason`` and hold its clones until ``retry_at``, unless it is
    failing (a real fault stands); whether the reason is new. The pool row is not locked
    here, so a health that moved meanwhile is read again."""
    for _ in range(3):
        if pool.health == Pool.Health.FAILING:
            return False
        news = pool.health_reason != reason
        try:
            pool.move_health(Pool.Health.DEGRADED, health_reason=reason, retry_at=retry_at)
        except StaleState:
            pool.refresh_from_db(fields=["health", "health_reason"])
            continue
        return news
    return False


def release(vm: VM, *, keep_back_until: datetime | None = None) -> int:
    """A destroyed VM gives back its address and forgets its password; how many addresses.

    Call in the transaction that makes the row destroyed: only a destroyed VM's address
    goes, and a second call (a destroy run twice) finds nothing left to release.
    ``keep_back_until``: no other VM gets the address before then (a clone of this VM that
    vCenter may still finish would boot with it).
    """
    held = IPAllocation.objects.filter(vm=vm, vm__state=VMState.DESTROYED)
    if keep_back_until and keep_back_until > timezone.now():
        released = held.update(vm=None, quarantined_until=keep_back_until)
    else:
        released, _ = held.delete()
    VMSecret.objects.filter(vm=vm, vm__state=VMState.DESTROYED).delete()
    return released


# ---------------------------------------------------------------- clone plans


@dataclass
class ClonePlan:
    """What one clone's spec gets, and the seed ISO to upload before it starts."""

    extra_config: dict[str, str] = field(default_factory=dict)
    customization: Customization | None = None
    cdrom_iso: str | None = None
    seed: SeedISO | None = None
    seed_data: bytes = field(default=b"", repr=False)


def _seed_datastore(pool: Pool, cfg: PoolFirstBoot) -> Datastore:
    ds = cfg.seed_datastore or pool.datastore
    if ds is None:
        # Any datastore mounted by every host of the cluster, so the clone can use it
        # wherever placement puts it.
        hosts = Host.objects.filter(cluster=pool.cluster_id).count()
        candidates = Datastore.objects.filter(hosts__cluster=pool.cluster_id).distinct().order_by("name")
        ds = next((d for d in candidates if d.hosts.filter(cluster=pool.cluster_id).count() >= hosts), None)
    if ds is None:
        raise FirstBootError(
            f"Pool {pool.name} delivers cloud-init by seed ISO but no datastore is known for it: "
            "choose a seed datastore on its first-boot page (or sync the inventory)."
        )
    return ds


def identity_for(vm: VM, cfg: PoolFirstBoot, *, password: str = "", allocation: IPAllocation | None = None
                 ) -> seed.Identity:
    rng = cfg.address_range
    return seed.Identity(
        vm_name=vm.name,
        hostname=seed.hostname_for(vm.name, windows=cfg.os_family == OSFamily.WINDOWS),
        pool=cfg.pool.name,
        instance_id=f"{vm.name}-{vm.pk}",
        domain=cfg.domain,
        timezone=cfg.timezone,
        ip=allocation.address if allocation else None,
        prefix=rng.ip_network.prefixlen if allocation and rng else None,
        gateway=rng.gateway if allocation and rng else None,
        dns=rng.dns if rng else (),
        admin_username=cfg.admin_username,
        password_hash=sha512_crypt(password) if password else "",
        ssh_authorized_keys=tuple(line.strip() for line in cfg.authorized_keys.splitlines()
                                  if line.strip() and not line.strip().startswith("#")),
    )


def plan_clones(pool: Pool, vms: list[VM]) -> dict[int, ClonePlan]:
    """Per VM (by pk): customisation, guestinfo keys or seed ISO. Database only.

    Creates each clone's password (kept encrypted) and, for seed ISOs, the SeedISO row
    before anything is uploaded. Raises FirstBootError when a template cannot render.
    """
    cfg = config_for(pool)
    plans = {vm.pk: ClonePlan() for vm in vms}
    if cfg is None or not vms:
        return plans
    allocations = {a.vm_id: a for a in IPAllocation.objects.filter(vm__in=vms)}
    existing = {s.vm_id: s for s in VMSecret.objects.filter(vm__in=vms)}
    windows = cfg.method == Method.CUSTOMIZATION and cfg.os_family == OSFamily.WINDOWS
    username = "Administrator" if windows else cfg.admin_username
    VMSecret.objects.bulk_create(
        VMSecret(vm=vm, username=username, password=new_password()) for vm in vms if vm.pk not in existing
    )
    secrets = {s.vm_id: s for s in VMSecret.objects.filter(vm__in=vms)}
    for vm in vms:
        identity = identity_for(vm, cfg, password=secrets[vm.pk].password, allocation=allocations.get(vm.pk))
        plan = plans[vm.pk]
        if cfg.method == Method.CUSTOMIZATION:
            plan.customization = Customization(
                hostname=identity.hostname, domain=cfg.domain, ip=identity.ip, netmask=identity.netmask,
                gateway=identity.gateway, dns=identity.dns, timezone=cfg.timezone, windows=windows,
                windows_timezone=cfg.windows_timezone,
                script="" if windows else seed.linux_script(identity),
                admin_password=secrets[vm.pk].password if windows else "",
            )
            continue
        user_data = seed.user_data(cfg.user_data, identity)
        if cfg.delivery == Delivery.GUESTINFO:
            plan.extra_config = seed.guestinfo(user_data, seed.meta_data(cfg.meta_data, identity, with_network=True))
        else:
            meta = seed.meta_data(cfg.meta_data, identity, with_network=False)
            plan.seed_data = seed.seed_iso(user_data, meta, seed.network_config(identity))
            ds = _seed_datastore(pool, cfg)
            path = f"{SEED_FOLDER}/{vm.name}-{vm.pk}.iso"
            plan.cdrom_iso = f"[{ds.name}] {path}"
            plan.seed = SeedISO.objects.create(vm=vm, vcenter_id=vm.vcenter_id, datastore_moid=ds.moid, path=path,
                                               datastore_path=plan.cdrom_iso)
    return plans


_warned_no_script: set[str] = set()  # log de-duplication only


def upload_seeds(conn: Connection, plans: Iterable[ClonePlan]) -> None:
    """Write the batch's seed ISOs to their datastores (before the clones that mount them).

    Also says, once per vCenter and process, when LinuxPrep's script cannot reach the
    vCenter (API before 7.0): those clones get their name and address but neither the
    password nor the pool's keys.
    """
    plans = list(plans)
    if (any(p.customization is not None and p.customization.script for p in plans)
            and conn.endpoint.host not in _warned_no_script and not ops.customization_script_supported(conn)):
        _warned_no_script.add(conn.endpoint.host)
        log.warning("vCenter %s speaks an API older than 7.0: guest customisation cannot run vmportal's script, "
                    "so clones get no first-boot password and no pool SSH keys", conn.endpoint.host)
    for plan in plans:
        if plan.seed is not None:
            ops.upload_datastore_file(conn, plan.seed.datastore_moid, plan.seed.path, plan.seed_data)


def discard_seeds(conn: Connection, vms: Iterable[VM]) -> int:
    """Delete the seed ISOs of these VMs (failed clones, destroyed VMs). Returns how many.

    Errors are logged and the rows kept, so a later destroy or sweep tries again.
    """
    return _delete_seeds(conn, SeedISO.objects.filter(vm__in=list(vms)))


def sweep_seeds(conn: Connection, *, vcenter_id: int, older_than: timedelta = timedelta(hours=1)) -> int:
    """Delete seed ISOs whose VM is gone or finished booting long ago (crashed workers)."""
    stale = SeedISO.objects.filter(vcenter_id=vcenter_id, created_at__lt=timezone.now() - older_than).filter(
        Q(vm__isnull=True) | ~Q(vm__state__in=(VMState.CLONING, VMState.BOOTING))
    )
    return _delete_seeds(conn, stale)


def _delete_seeds(conn: Connection, isos: Iterable[SeedISO]) -> int:
    """Delete each ISO's file, then its row; a file vCenter would not delete keeps its row
    (logged), so the next destroy or sweep tries again."""
    done = 0
    for iso in isos:
        try:
            ops.delete_datastore_file(conn, iso.datastore_moid, iso.path)
        except VSphereError as exc:
            log.warning("seed ISO %s not deleted yet: %s", iso, exc)
            continue
        iso.delete()
        done += 1
    return done


# ---------------------------------------------------------------- readiness


def expectations(vms: Iterable[VM]) -> dict[str, GuestExpectation]:
    """By moid: what each booting VM must report to be usable (only pools with a method)."""
    vms = [vm for vm in vms if vm.moid]
    pools = {vm.pool_id for vm in vms}
    configs: dict[int | None, PoolFirstBoot] = {
        c.pool_id: c for c in PoolFirstBoot.objects.filter(pool_id__in=pools).exclude(method=Method.NONE)
    }
    if not configs:
        return {}
    addresses = dict(IPAllocation.objects.filter(vm__in=vms).values_list("vm_id", "address"))
    out = {}
    for vm in vms:
        cfg = configs.get(vm.pool_id)
        if cfg is None:
            continue
        windows = cfg.method == Method.CUSTOMIZATION and cfg.os_family == OSFamily.WINDOWS
        out[vm.moid] = GuestExpectation(
            hostname=seed.hostname_for(vm.name, windows=windows), ip=addresses.get(vm.pk), tools_running=True
        )
    return out


def finish_usable(
    conn: Connection, booting: Mapping[str, VM], seen: Mapping[str, GuestInfo | str]
) -> dict[str, GuestInfo | str]:
    """For each usable VM: eject and delete its seed ISO, scrub its guestinfo user-data.

    A VM whose cleanup fails stays booting (with the reason), so the next look retries
    and the boot timeout ends it with that reason rather than handing it out.
    """
    out = dict(seen)
    usable = [booting[m] for m, o in seen.items() if not isinstance(o, str)]
    if not usable:
        return out
    seeds: dict[int | None, list[SeedISO]] = {}
    for iso in SeedISO.objects.filter(vm__in=usable):
        seeds.setdefault(iso.vm_id, []).append(iso)
    guestinfo_pools = set(
        PoolFirstBoot.objects.filter(pool_id__in={vm.pool_id for vm in usable}, method=Method.CLOUD_INIT,
                                     delivery=Delivery.GUESTINFO).values_list("pool_id", flat=True)
    )
    for vm in usable:
        try:
            for iso in seeds.get(vm.pk, []):
                ops.eject_cdrom(conn, vm.moid, iso.datastore_path)
                ops.delete_datastore_file(conn, iso.datastore_moid, iso.path)
                iso.delete()
            if vm.pool_id in guestinfo_pools:
                ops.set_extra_config(conn, vm.moid, seed.GUESTINFO_SECRETS)
        except VSphereError as exc:
            out[vm.moid] = f"first-boot cleanup failed: {exc}"
    return out
