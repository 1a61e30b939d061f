"""Pool administration: create, reconfigure at runtime, drain and reset.

Every write locks the pool row first (FOR NO KEY UPDATE), so two admins, or an admin and
the pool manager's reconcile, never interleave on one pool. The pool manager acts on the
new settings after the commit (nudge); nothing here calls vSphere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Q
from django.db.models.functions import Coalesce

from apps.audit import services as audit
from apps.core.errors import NotFound
from apps.inventory.models import Cluster
from apps.pools import nudge
from apps.pools.models import VM, Pool, Template, TemplateStatus, VMState

# Fields an admin may change; also what the audit log records before/after.
AUDITED_FIELDS = (
    "name", "description", "template", "cluster", "folder", "datastore", "network", "size", "autosize", "min_size",
    "max_size", "linked_clones",
    "cpus", "memory_mb", "ready_ttl", "lease_lifetime", "lease_max_lifetime", "boot_timeout", "max_tries",
    "enabled", "health", "health_reason", "consecutive_failures", "retry_at", "domain", "aliases", "alias_weight",
)


@dataclass(frozen=True)
class PoolCounts:
    ready: int = 0
    booting: int = 0
    cloning: int = 0
    leased: int = 0
    # Of the ready/booting VMs, those known to be outside the cluster the counts were taken
    # for (the new clone target in a preview): a cluster change drains them.
    ready_elsewhere: int = 0
    booting_elsewhere: int = 0

    @property
    def in_flight(self) -> int:
        return self.booting + self.cloning


@dataclass(frozen=True)
class PoolShape:
    """The parts of a pool's configuration that decide what reconcile will do."""

    size: int
    template_id: int | None
    cluster_id: int | None
    enabled: bool = True


@dataclass(frozen=True)
class Preview:
    clone: int = 0
    drain_ready: int = 0
    drain_booting: int = 0
    leased_untouched: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def changes_anything(self) -> bool:
        return bool(self.clone or self.drain_ready or self.drain_booting)

    @property
    def summary(self) -> str:
        parts = []
        if self.clone:
            parts.append(f"clone {self.clone}")
        if self.drain_ready:
            parts.append(f"drain {self.drain_ready} ready VM{'s' if self.drain_ready != 1 else ''}")
        if self.drain_booting:
            parts.append(f"drain {self.drain_booting} booting VM{'s' if self.drain_booting != 1 else ''}")
        if not parts:
            parts.append("no VMs cloned or destroyed")
        parts.append(f"{self.leased_untouched} leased VM{'s' if self.leased_untouched != 1 else ''} untouched")
        return ", ".join(parts)


def preview_reconfigure(*, counts: PoolCounts, current: PoolShape, new: PoolShape) -> Preview:
    """What reconcile_pool will do once ``new`` replaces ``current`` (pure; mirrors its rules).

    A template change drains ready and booting VMs of the old template (clones already in
    vSphere finish and are trimmed later); a size change clones the deficit or destroys the
    excess ready VMs; leased VMs are never touched, they go when their lease ends.
    """
    notes: list[str] = []
    target = new.size if new.enabled else 0
    if not new.enabled and current.enabled:
        notes.append("The pool is disabled: no new checkouts, ready VMs are drained.")
    if new.template_id != current.template_id:
        drain_ready, drain_booting = counts.ready, counts.booting
        remaining = counts.cloning
        notes.append("The template changes: ready VMs of the old template are destroyed and recloned.")
    else:
        drain_ready = drain_booting = 0
        if new.cluster_id != current.cluster_id:
            drain_ready, drain_booting = counts.ready_elsewhere, counts.booting_elsewhere
        remaining = counts.ready + counts.in_flight - drain_ready - drain_booting
        excess = max(0, remaining - target)
        shrink = min(counts.ready - drain_ready, excess)
        drain_ready += shrink
        remaining -= shrink
    if new.cluster_id != current.cluster_id:
        notes.append("The clone target changes: new clones go to the new cluster, and ready and booting VMs "
                     "in the old one are drained (destroyed and recloned there).")
    clone = max(0, target - remaining)
    return Preview(
        clone=clone, drain_ready=drain_ready, drain_booting=drain_booting,
        leased_untouched=counts.leased, notes=tuple(notes),
    )


def pool_counts(pool: Pool, *, cluster_id: int | None = None) -> PoolCounts:
    """The pool's VMs by state; ``*_elsewhere`` relative to ``cluster_id`` (default: the pool's).

    On-demand VMs belong to their request, not the pool, so they are not counted (as in
    reconcile_pool); where a VM is follows reconcile_pool too: its host's cluster, else
    the cluster its slot was claimed for.
    """
    cluster_id = pool.cluster_id if cluster_id is None else cluster_id
    outside = Q(where__isnull=False) & ~Q(where=cluster_id)
    row = (
        VM.objects.filter(pool_id=pool.pk, on_demand=False)
        .annotate(where=Coalesce("host__cluster_id", "cluster_id"))
        .aggregate(
            ready=Count("pk", filter=Q(state=VMState.READY)),
            booting=Count("pk", filter=Q(state=VMState.BOOTING)),
            cloning=Count("pk", filter=Q(state=VMState.CLONING)),
            leased=Count("pk", filter=Q(state=VMState.LEASED)),
            ready_elsewhere=Count("pk", filter=Q(state=VMState.READY) & outside),
            booting_elsewhere=Count("pk", filter=Q(state=VMState.BOOTING) & outside),
        )
    )
    return PoolCounts(**row)


def shape_of(pool: Pool) -> PoolShape:
    return PoolShape(size=pool.size, template_id=pool.template_id, cluster_id=pool.cluster_id, enabled=pool.enabled)


def template_not_ready_reason(template: Template | None, cluster: Cluster | None) -> str:
    """Why pools cannot use ``template`` in ``cluster`` ("" when they can).

    A cluster without a ready copy is fine: the pool manager makes one there (its pool shows
    "waiting for template copy in <cluster>" meanwhile)."""
    if template is None or cluster is None:
        return ""
    if template.status != TemplateStatus.READY:
        reason = f": {template.status_reason}" if template.status_reason else ""
        return f"Template {template} is {template.get_status_display().lower()}{reason}. Choose a ready template."
    if not template.copies.filter(status=TemplateStatus.READY).exclude(moid="").exists():
        return f"Template {template} has no ready copy in any cluster to copy to {cluster} from; prepare it first."
    return ""


def validate_pool(pool: Pool) -> None:
    """Pool.clean plus the rules that need other rows: raises ValidationError by field."""
    errors: dict[str, list[str]] = {}
    try:
        pool.full_clean(validate_unique=True)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if pool.template_id and pool.cluster_id and "template" not in errors:
        reason = template_not_ready_reason(pool.template, pool.cluster)
        if reason:
            errors.setdefault("template", []).append(reason)
    if errors:
        raise ValidationError(errors)


def snapshot(pool: Pool) -> dict:
    data = {}
    for name in AUDITED_FIELDS:
        f = Pool._meta.get_field(name)
        value = getattr(pool, f.attname)
        if f.is_relation and value is not None:
            related = getattr(pool, name)
            value = {"id": value, "name": str(related)}
        elif value is not None and not isinstance(value, bool | int | float | str):
            value = str(value)
        data[name] = value
    return data


def changed_only(before: dict, after: dict) -> tuple[dict, dict]:
    keys = [k for k in after if before.get(k) != after.get(k)]
    return {k: before.get(k) for k in keys}, {k: after[k] for k in keys}


def _locked(pool_id: int) -> Pool:
    try:
        # FOR NO KEY UPDATE: checkouts' and returns' foreign-key checks (KEY SHARE) on the
        # pool row must not wait for an admin's change of its settings.
        return Pool.objects.select_for_update(no_key=True).get(pk=pool_id)
    except Pool.DoesNotExist:
        raise NotFound(f"Pool {pool_id} does not exist.") from None


@transaction.atomic
def create_pool(*, pool: Pool) -> Pool:
    validate_pool(pool)
    pool.save()
    audit.record("pool.create", target=pool, pool=pool, after=snapshot(pool),
                 message=f"Created with size {pool.size}: clone {pool.size} from {pool.template} on {pool.cluster}."
                 if pool.size else f"Created empty (size 0), from {pool.template} on {pool.cluster}.")
    nudge.nudge(pool.pk)
    return pool


@transaction.atomic
def update_pool(*, pool_id: int, changes: dict, action: str = "pool.reconfigure",
                message: str = "") -> tuple[Pool, Preview]:
    """Apply ``changes`` (field → value) to the pool, locked, validated, audited, then nudge.

    ``message`` says why (automatic sizing's reason); the audit event adds what it does."""
    pool = _locked(pool_id)
    current = shape_of(pool)
    before = snapshot(pool)
    for name, value in changes.items():
        if name not in AUDITED_FIELDS:
            raise ValueError(f"{name} is not an editable pool field.")
        setattr(pool, name, value)
    counts = pool_counts(pool)  # relative to the (possibly new) clone target
    # Template readiness is checked only when template or cluster change: a pool whose
    # template later failed must still be resizable (to 0, say) by an admin.
    if pool.template_id != current.template_id or pool.cluster_id != current.cluster_id:
        validate_pool(pool)
    else:
        pool.full_clean()
    result = preview_reconfigure(counts=counts, current=current, new=shape_of(pool))
    old, new = changed_only(before, snapshot(pool))
    # Every field that may change is audited: nothing audited changed, nothing to write (a
    # form posting an empty optional number, read as its default, is no change).
    if old or new:
        pool.save()
        audit.record(action, target=pool, pool=pool, before=old, after=new,
                     message=f"{message} {result.summary}." if message else result.summary)
        nudge.nudge(pool.pk)
    return pool, result


def reconfigure(*, pool_id: int, size: int | None = None, template: Template | None = None,
                cluster: Cluster | None = None) -> tuple[Pool, Preview]:
    """The runtime knobs (vmpooler's /config/poolsize, pooltemplate, clonetarget)."""
    changes: dict = {}
    if size is not None:
        changes["size"] = size
    if template is not None:
        changes["template"] = template
    if cluster is not None:
        changes["cluster"] = cluster
    return update_pool(pool_id=pool_id, changes=changes)


@transaction.atomic
def drain(*, pool_id: int, disable: bool = False) -> tuple[Pool, Preview]:
    """Size 0 (or disabled): ready VMs are destroyed, leased VMs stay until returned.

    Automatic sizing is turned off too: it would refill the pool at the next reconcile."""
    changes: dict = {"size": 0, "autosize": False}
    if disable:
        changes["enabled"] = False
    # Its own action, so the audit log tells a drain from a resize to 0.
    pool, result = update_pool(pool_id=pool_id, changes=changes, action="pool.drain",
                               message="Drained and disabled:" if disable else "Drained:")
    return pool, result


@transaction.atomic
def reset(*, pool_id: int) -> Pool:
    """Clear a failing/degraded pool so the pool manager tries again at once."""
    pool = _locked(pool_id)
    before = {"health": pool.health, "health_reason": pool.health_reason,
              "consecutive_failures": pool.consecutive_failures,
              "retry_at": pool.retry_at.isoformat() if pool.retry_at else None}
    pool.move_health(Pool.Health.OK, health_reason="", consecutive_failures=0, retry_at=None)
    audit.record("pool.reset", target=pool, pool=pool, before=before,
                 after={"health": "ok", "health_reason": "", "consecutive_failures": 0, "retry_at": None})
    nudge.nudge(pool.pk)
    return pool
