"""Register a template that already exists in vSphere, and prepare a copy of it for linked
clones; the template rows every other way of making one starts and ends with."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from apps.audit import services as audit
from apps.core.errors import Conflict, VmPortalError
from apps.inventory.models import Cluster, InventoryVM, VCenter
from apps.jobs import runner
from apps.pools.models import Template, TemplateCopy, TemplateStatus
from apps.pools.templates.recovery import fail_template
from apps.vsphere import operations as ops
from apps.vsphere.session import Endpoint, connect


def _cluster_of(vcenter: VCenter, moid: str) -> Cluster | None:
    seen = InventoryVM.objects.filter(vcenter=vcenter, moid=moid).select_related("host__cluster").first()
    return seen.host.cluster if seen and seen.host else None


def new_template(*, vcenter: VCenter, name: str, status: str, **fields) -> Template:
    try:
        with transaction.atomic():
            return Template.objects.create(vcenter=vcenter, name=name, status=status, **fields)
    except IntegrityError:
        raise Conflict(f"A template named {name} already exists on {vcenter}.") from None


def mark_ready(template: Template, copy: TemplateCopy, info, *, action: str = "template.ready") -> None:
    """Ready the template and its copy from the states this job left them in; StaleState
    (nothing written) if someone else moved either first."""
    with transaction.atomic():
        for obj in (copy, template):
            if obj.status == TemplateStatus.DEPLOYING:  # an upload whose progress never said 100
                obj.move_to(TemplateStatus.PREPARING, progress=100)
        copy.move_to(TemplateStatus.READY, moid=info.moid, snapshot_moid=info.snapshot_moid or "",
                     status_reason="", progress=100)
        template.move_to(TemplateStatus.READY, status_reason="", progress=100, inventory_path=info.path)
        audit.record(action, target=template,
                     after={"cluster": str(copy.cluster), "moid": info.moid, "path": info.path})


def register_template(*, vcenter: VCenter, name: str, inventory_path: str, os_name: str = "",
                      description: str = "", prepare_now: bool = False) -> Template:
    """Record a template that already exists in vSphere, then prepare it (job or inline).

    Re-registering the same name with the same path returns the existing row.
    """
    with connect(Endpoint.from_vcenter(vcenter)) as conn:
        info = ops.register_template(conn, inventory_path)
    cluster = _cluster_of(vcenter, info.moid)
    if cluster is None:
        raise VmPortalError(
            f"{inventory_path} is not in the synced inventory yet (or not on a clustered host); "
            "sync the inventory and try again."
        )
    with transaction.atomic():
        existing = Template.objects.filter(vcenter=vcenter, name=name).first()
        if existing is not None:
            if existing.inventory_path != inventory_path:
                raise Conflict(f"A template named {name} already exists for {existing.inventory_path}.")
            template = existing
        else:
            try:
                template = Template.objects.create(
                    vcenter=vcenter, name=name, os_name=os_name, description=description,
                    source=Template.Source.REGISTERED, inventory_path=inventory_path,
                    status=TemplateStatus.PREPARING,
                )
            except IntegrityError:
                raise Conflict(f"A template named {name} was registered at the same moment.") from None
            audit.record("template.register", target=template, after={"path": inventory_path, "os": os_name})
        copy, _ = TemplateCopy.objects.get_or_create(
            template=template, cluster=cluster, defaults={"moid": info.moid, "status": TemplateStatus.PREPARING}
        )
        # Registering a failed one again is how an admin retries its preparation.
        for obj in (template, copy):
            if obj.status == TemplateStatus.FAILED:
                obj.move_to(TemplateStatus.PREPARING, status_reason="")
        if not prepare_now and copy.status != TemplateStatus.READY:
            runner.enqueue("pools.prepare_template", target=template, copy_id=copy.pk)
    if prepare_now and copy.status != TemplateStatus.READY:
        prepare_copy(copy.pk)
        template.refresh_from_db()
    return template


def prepare_copy(copy_id: int) -> TemplateCopy:
    """Give a template copy its linked-clone base snapshot and mark it as a template."""
    copy = TemplateCopy.objects.select_related("template__vcenter", "cluster").get(pk=copy_id)
    template = copy.template
    if copy.status != TemplateStatus.PREPARING:
        return copy  # prepared (or failed) by another run of this job meanwhile
    try:
        with connect(Endpoint.from_vcenter(template.vcenter)) as conn:
            info = ops.prepare_template(conn, copy.moid)
    except VmPortalError as exc:
        fail_template(template.pk, str(exc), copy_id=copy.pk)
        raise
    # Losing to a racing writer (StaleState, a 409 when inline) leaves nothing behind: the
    # template was the admin's in vSphere before, and preparing it again is harmless.
    with transaction.atomic():
        copy.move_to(TemplateStatus.READY, snapshot_moid=info.snapshot_moid or "", status_reason="", progress=100)
        if template.status != TemplateStatus.READY:
            template.move_to(TemplateStatus.READY, status_reason="")
        audit.record("template.ready", target=template, after={"cluster": str(copy.cluster)})
    return copy
