"""Pool and template pages for admins, and the system health page. Each page view also
serves its live partial to htmx polls (STYLE.md)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q, prefetch_related_objects
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.audit.models import AuditEvent
from apps.core.errors import VmPortalError
from apps.core.htmx import htmx_partial, render_polled
from apps.core.listing import sort_and_search
from apps.core.permissions import admin_required
from apps.jobs.models import Job
from apps.pools import autosize
from apps.pools import reconfigure as services
from apps.pools.forms import (
    CaptureVMForm,
    CopyTemplateForm,
    DeployOvfForm,
    DeriveTemplateForm,
    PoolForm,
    ReconfigureForm,
    RegisterTemplateForm,
    schedule_formset,
)
from apps.pools.health import system_health, system_health_json
from apps.pools.models import VM, Pool, Template, TemplateBuild
from apps.pools.selectors import pools_with_counts, template_copy_state
from apps.pools.templates import (
    DeployTarget,
    discard_build,
    forget_failed_template,
    register_template,
    request_capture,
    start_copy_to_cluster,
    start_derive,
    start_ovf_deploy,
    start_vm_capture,
)
from apps.pools.uploads import LimitedDiskUploadHandler, StoredUpload
from apps.vsphere.placement import thresholds as placement_thresholds

IN_FLIGHT = ("pending", "deploying", "preparing")  # template and copy statuses that move by themselves


def _validation_messages(exc: ValidationError) -> list[str]:
    if hasattr(exc, "message_dict"):
        return [f"{'' if k == '__all__' else k + ': '}{m}" for k, ms in exc.message_dict.items() for m in ms]
    return list(exc.messages)


# --- pools -------------------------------------------------------------------------------


@admin_required
@require_GET
def pool_list(request: HttpRequest) -> HttpResponse:
    pools = pools_with_counts().select_related("template", "cluster")
    template = "pools/partials/_pool_rows.html" if htmx_partial(request) else "pools/pool_list.html"
    return render(request, template, {"pools": pools})


@admin_required
@require_http_methods(["GET", "POST"])
def pool_create(request: HttpRequest) -> HttpResponse:
    form = PoolForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            pool = services.create_pool(pool=form.save(commit=False))
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Pool {pool.name} created; the pool manager starts filling it.")
            return redirect("adminui:pool-detail", pool_id=pool.pk)
    status = 400 if form.errors else 200
    return render(request, "pools/pool_form.html", {"form": form, "creating": True}, status=status)


@admin_required
@require_http_methods(["GET", "POST"])
def pool_detail(request: HttpRequest, pool_id: int) -> HttpResponse:
    pool = get_object_or_404(Pool.objects.select_related("template", "cluster", "firstboot"), pk=pool_id)
    if request.method == "GET" and htmx_partial(request):
        # The page's poll swaps in #pool-live and #pool-vms only: the forms, the chart and the
        # events around them are not rendered for it (issue 14: most of the page's time).
        return render(request, "pools/partials/_pool_poll.html", _live_context(request, pool))
    form = PoolForm(request.POST or None, instance=pool, prefix="edit")
    schedules = schedule_formset(request.POST or None, pool)
    # Both checked, so every error shows at once; the schedules after the form, as their
    # sizes are checked against the bounds just posted.
    valid = request.method == "POST" and form.is_valid()
    valid = request.method == "POST" and (not schedules.is_bound or schedules.is_valid()) and valid
    if valid:
        changes = {name: form.cleaned_data[name] for name in form.changed_data}
        try:
            with transaction.atomic():
                pool, result = services.update_pool(pool_id=pool_id, changes=changes)
                rescheduled = schedules.is_bound and autosize.save_schedules(pool=pool, formset=schedules)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            saved = [result.summary] if changes else []
            if rescheduled:
                saved.append(f"schedules {'; '.join(autosize.schedule_labels(pool)) or 'none'}")
            messages.success(request, f"Saved {pool.name}: {', '.join(saved)}." if saved else "Nothing changed.")
            return redirect("adminui:pool-detail", pool_id=pool.pk)
        pool = Pool.objects.select_related("template", "cluster").get(pk=pool_id)
    failed = bool(form.errors) or (schedules.is_bound and not schedules.is_valid())
    return render(request, "pools/pool_detail.html", _pool_context(request, pool, form=form, schedules=schedules),
                  status=400 if failed else 200)


def _live_context(request: HttpRequest, pool: Pool, counts: services.PoolCounts | None = None) -> dict:
    """What the polled parts of the pool page show (_pool_live.html and _pool_vms.html)."""
    # One query for the schedules, shared by the list and the ones active now.
    prefetch_related_objects([pool], "schedules")
    active = autosize.active_schedules(pool, timezone.now())
    live_vms, vm_listing = sort_and_search(
        request, pool.vms.filter(state__in=("ready", "leased")).select_related("lease__user", "cluster"),
        columns={"name": ("name",), "state": ("state", "name"), "ip": ("ip_address",),
                 "cluster": ("cluster__name", "name"), "user": ("lease__user__username", "name")},
        default="state", search=("name", "hostname", "ip_address", "cluster__name", "lease__user__username"))
    return {
        "pool": pool,
        "counts": counts if counts is not None else services.pool_counts(pool),
        "template_copy": template_copy_state(pool),
        "autosize_change": autosize.last_change(pool) if pool.autosize else None,
        "schedule_entries": [(e, e in active) for e in pool.schedules.all()],
        "host_limits": placement_thresholds(),
        "live_vms": live_vms[:50], "vm_listing": vm_listing,
    }


def _pool_context(request: HttpRequest, pool: Pool, *, form=None, reconfigure_form=None, schedules=None) -> dict:
    counts = services.pool_counts(pool)
    return {
        **_live_context(request, pool, counts),
        "form": form or PoolForm(instance=pool, prefix="edit"),
        "schedules": schedules or schedule_formset(None, pool),
        "time_zone": settings.TIME_ZONE,
        "reconfigure_form": reconfigure_form or ReconfigureForm(pool=pool),
        "drain_preview": services.preview_reconfigure(
            counts=counts, current=services.shape_of(pool),
            new=services.PoolShape(size=0, template_id=pool.template_id, cluster_id=pool.cluster_id, enabled=False),
        ),
        "recent_events": AuditEvent.objects.filter(pool_id=pool.pk).order_by("-at", "-id")[:10],
    }


@admin_required
@require_POST
def pool_preview(request: HttpRequest, pool_id: int) -> HttpResponse:
    """The reconfigure panel's live preview (HTMX, on every change of the form)."""
    pool = get_object_or_404(Pool.objects.select_related("template"), pk=pool_id)
    form = ReconfigureForm(request.POST, pool=pool)
    preview = None
    if form.is_valid():
        shape = form.shape()
        preview = services.preview_reconfigure(
            counts=services.pool_counts(pool, cluster_id=shape.cluster_id), current=services.shape_of(pool),
            new=shape,
        )
    return render(request, "pools/partials/_preview.html", {"preview": preview, "reconfigure_form": form})


@admin_required
@require_POST
def pool_reconfigure(request: HttpRequest, pool_id: int) -> HttpResponse:
    pool = get_object_or_404(Pool.objects.select_related("template", "cluster"), pk=pool_id)
    form = ReconfigureForm(request.POST, pool=pool)
    if form.is_valid():
        d = form.cleaned_data
        try:
            pool, result = services.reconfigure(pool_id=pool.pk, size=d["size"], template=d["template"],
                                                cluster=d["cluster"])
        except ValidationError as exc:
            for m in _validation_messages(exc):
                form.add_error(None, m)
        else:
            messages.success(request, f"{pool.name} reconfigured: {result.summary}.")
            return redirect("adminui:pool-detail", pool_id=pool.pk)
    return render(request, "pools/pool_detail.html", _pool_context(request, pool, reconfigure_form=form), status=400)


@admin_required
@require_POST
def pool_drain(request: HttpRequest, pool_id: int) -> HttpResponse:
    pool = get_object_or_404(Pool, pk=pool_id)
    disable = request.POST.get("disable") == "1"
    try:
        pool, result = services.drain(pool_id=pool.pk, disable=disable)
    except ValidationError as exc:
        for m in _validation_messages(exc):
            messages.error(request, m)
    else:
        messages.success(request, f"{pool.name} {'disabled and ' if disable else ''}draining: {result.summary}.")
    return redirect("adminui:pool-detail", pool_id=pool_id)


@admin_required
@require_POST
def pool_reset(request: HttpRequest, pool_id: int) -> HttpResponse:
    pool = get_object_or_404(Pool, pk=pool_id)
    services.reset(pool_id=pool.pk)
    messages.success(request, f"{pool.name} reset: failures cleared, cloning resumes now.")
    return redirect("adminui:pool-detail", pool_id=pool_id)


# --- templates, health ----------------------------------------------------------


def _templates_context(form: RegisterTemplateForm | None = None, deploy_form: DeployOvfForm | None = None) -> dict:
    templates = list(Template.objects.select_related("vcenter", "parent")
                     .prefetch_related("copies__cluster", "copies__datastore").order_by("name"))
    # Once no template or copy is on its way, nothing on the list changes by itself: no polling.
    in_flight = any(t.status in IN_FLIGHT or any(c.status in IN_FLIGHT for c in t.copies.all()) for t in templates)
    return {"templates": templates, "in_flight": in_flight, "form": form or RegisterTemplateForm(),
            "deploy_form": deploy_form or DeployOvfForm()}


@admin_required
@require_http_methods(["GET", "POST"])
def template_list(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = RegisterTemplateForm(request.POST)
        if form.is_valid():
            d = form.cleaned_data
            try:
                template = register_template(vcenter=d["vcenter"], name=d["name"],
                                             inventory_path=d["inventory_path"], os_name=d["os_name"])
            except VmPortalError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Template {template.name} registered; preparing it now.")
                return redirect("adminui:templates")
        return render(request, "pools/template_list.html", _templates_context(form), status=400)
    if htmx_partial(request):
        ctx = _templates_context()
        return render_polled(request, "pools/partials/_template_rows.html", ctx, settled=not ctx["in_flight"])
    return render(request, "pools/template_list.html", _templates_context())


@admin_required
@require_GET
def health(request: HttpRequest) -> HttpResponse:
    facts = system_health()
    template = "pools/partials/_health.html" if htmx_partial(request) else "pools/health.html"
    return render(request, template, {"facts": facts, "json_url": reverse("adminui:health-json")})


@admin_required
@require_GET
def health_json(request: HttpRequest) -> JsonResponse:
    facts = system_health()
    return JsonResponse(system_health_json(facts), status=200 if facts["ok"] else 503)


# --- templates: deploy, detail, derive, capture -----------------------------------------------

@csrf_exempt  # only so the upload handler can be swapped before the body is read; see below
@admin_required
@require_POST
def template_deploy(request: HttpRequest) -> HttpResponse:
    # Django's CSRF check reads request.POST, which parses the upload with the default
    # handlers; ours must be in place first, so CSRF is checked inside (csrf_protect).
    handler = LimitedDiskUploadHandler(request)
    request.upload_handlers = [handler]
    return _template_deploy(request, handler)


@csrf_protect
def _template_deploy(request: HttpRequest, handler: LimitedDiskUploadHandler) -> HttpResponse:
    form = DeployOvfForm(request.POST, request.FILES, upload_error=handler.error)
    upload = request.FILES.get("file")
    if form.is_valid():
        d = form.cleaned_data
        try:
            template = start_ovf_deploy(
                name=d["name"], os_name=d["os_name"], url=d["url"],
                upload_path=str(upload.path) if upload else "",
                target=DeployTarget(cluster=d["cluster"], folder=d["folder"], datastore=d["datastore"],
                                    network=d["network"]),
            )
        except (VmPortalError, ValueError) as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Deploying {template.name}; progress shows below.")
            return redirect("adminui:template-detail", template_id=template.pk)
    if isinstance(upload, StoredUpload):
        upload.discard()
    return render(request, "pools/template_list.html", _templates_context(deploy_form=form), status=400)


def _template_jobs(template: Template):
    builds = [str(pk) for pk in template.builds.values_list("pk", flat=True)]
    return Job.objects.filter(
        Q(object_type="pools.template", object_id=str(template.pk))
        | Q(object_type="pools.templatebuild", object_id__in=builds)
    ).order_by("-created_at")[:10]


def _template_detail_context(template: Template, derive_form: DeriveTemplateForm | None = None,
                             copy_form: CopyTemplateForm | None = None) -> dict:
    builds = list(template.builds.select_related("cluster", "source_template", "source_vm"))
    copies = list(template.copies.select_related("cluster", "datastore").order_by("cluster__name"))
    # A build VM waiting for the admin's capture may wait for days: no need to poll then.
    busy = (TemplateBuild.Status.CLONING, TemplateBuild.Status.CAPTURING, TemplateBuild.Status.DISCARDING)
    in_flight = (template.status in ("deploying", "preparing") or any(b.status in busy for b in builds)
                 or any(c.status in IN_FLIGHT for c in copies))
    return {
        "template": template, "copies": copies,
        "builds": builds, "jobs": _template_jobs(template), "in_flight": in_flight,
        "derived": Template.objects.filter(parent=template).order_by("name"),
        "pools": template.pools.order_by("name"),
        "derive_form": derive_form or DeriveTemplateForm(source=template),
        "copy_form": copy_form or CopyTemplateForm(template=template),
    }


@admin_required
@require_GET
def template_detail(request: HttpRequest, template_id: int) -> HttpResponse:
    template = get_object_or_404(Template.objects.select_related("vcenter", "parent"), pk=template_id)
    ctx = _template_detail_context(template)
    if htmx_partial(request):
        return render_polled(request, "pools/partials/_template_live.html", ctx, settled=not ctx["in_flight"])
    return render(request, "pools/template_detail.html", ctx)


@admin_required
@require_POST
def template_derive(request: HttpRequest, template_id: int) -> HttpResponse:
    source = get_object_or_404(Template.objects.select_related("vcenter"), pk=template_id)
    form = DeriveTemplateForm(request.POST, source=source)
    if form.is_valid():
        d = form.cleaned_data
        try:
            build = start_derive(source=source, cluster=d["cluster"], name=d["name"], os_name=d["os_name"],
                                 user=request.user)
        except VmPortalError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Cloning build VM {build.vm_name} from {source.name}; "
                                      "its name and IP show below when it is up.")
            return redirect("adminui:template-detail", template_id=build.template_id)
    return render(request, "pools/template_detail.html", _template_detail_context(source, form), status=400)


@admin_required
@require_POST
def template_copy(request: HttpRequest, template_id: int) -> HttpResponse:
    template = get_object_or_404(Template.objects.select_related("vcenter"), pk=template_id)
    form = CopyTemplateForm(request.POST, template=template)
    if form.is_valid():
        try:
            copy = start_copy_to_cluster(template=template, cluster=form.cleaned_data["cluster"])
        except VmPortalError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Copying {template.name} to {copy.cluster}; pools there can use it once "
                                      "the copy is ready.")
            return redirect("adminui:template-detail", template_id=template.pk)
    return render(request, "pools/template_detail.html", _template_detail_context(template, copy_form=form),
                  status=400)


@admin_required
@require_POST
def template_forget(request: HttpRequest, template_id: int) -> HttpResponse:
    template = get_object_or_404(Template, pk=template_id)
    try:
        name = forget_failed_template(template_id=template.pk)
    except VmPortalError as exc:
        messages.error(request, str(exc))
        return redirect("adminui:template-detail", template_id=template.pk)
    messages.success(request, f"Removed failed template {name}; the name is free again.")
    return redirect("adminui:templates")


def _build_action(request: HttpRequest, build_id: int, action) -> HttpResponse:
    build = get_object_or_404(TemplateBuild, pk=build_id)
    try:
        build = action(build_id=build.pk)
    except VmPortalError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{build.vm_name}: {build.get_status_display().lower()}.")
    if build.template_id and Template.objects.filter(pk=build.template_id).exists():
        return redirect("adminui:template-detail", template_id=build.template_id)
    return redirect("adminui:templates")


@admin_required
@require_POST
def build_capture(request: HttpRequest, build_id: int) -> HttpResponse:
    return _build_action(request, build_id, request_capture)


@admin_required
@require_POST
def build_discard(request: HttpRequest, build_id: int) -> HttpResponse:
    return _build_action(request, build_id, discard_build)


@admin_required
@require_http_methods(["GET", "POST"])
def vm_capture(request: HttpRequest, vm_id: int) -> HttpResponse:
    vm = get_object_or_404(VM.objects.select_related("template", "pool", "vcenter"), pk=vm_id)
    form = CaptureVMForm(request.POST or None, vm=vm)
    if request.method == "POST" and form.is_valid():
        try:
            build = start_vm_capture(vm=vm, name=form.cleaned_data["name"], os_name=form.cleaned_data["os_name"],
                                     user=request.user)
        except VmPortalError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Copying {vm.name} into template {build.template_name}; "
                                      "the VM and its lease carry on untouched.")
            return redirect("adminui:template-detail", template_id=build.template_id)
    lease = getattr(vm, "lease", None) if vm.state == "leased" else None
    return render(request, "pools/vm_capture.html", {"vm": vm, "form": form, "lease": lease},
                  status=400 if form.errors else 200)
