from __future__ import annotations

from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.validators import MaxValueValidator
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRedirect, push_url

from apps.core.errors import VmPortalError
from apps.core.fields import AsciiIntegerField
from apps.core.htmx import htmx_partial, render_polled
from apps.core.listing import sort_and_search
from apps.leases import ondemand, services, vmtasks
from apps.leases.models import Lease, OnDemandRequest, VMTask
from apps.pools.models import Pool
from apps.pools.selectors import pools_with_counts

EXTEND_CHOICES = {"1": timedelta(hours=1), "4": timedelta(hours=4), "24": timedelta(hours=24)}
DISMISSED = "ondemand_dismissed"  # session key: request ids hidden from My VMs


class MultiCheckoutForm(forms.Form):
    pool = forms.ModelChoiceField(queryset=Pool.objects.filter(enabled=True).order_by("name"), to_field_name="name",
                                  empty_label=None)
    count = AsciiIntegerField(min_value=1, initial=2)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The same limit as both APIs' and the checkout service's.
        limit = settings.VMPORTAL_MAX_VMS_PER_CHECKOUT
        self.fields["count"].max_value = limit
        self.fields["count"].validators.append(MaxValueValidator(limit))
        self.fields["count"].widget.attrs["max"] = limit


def home(request: HttpRequest) -> HttpResponse:
    """The start page: every enabled pool with its ready VMs, to check out from (polled for counts)."""
    pools = pools_with_counts().filter(enabled=True)
    template = "leases/partials/_pool_rows.html" if htmx_partial(request) else "leases/home.html"
    return render(request, template, {"pools": pools, "max_per_checkout": settings.VMPORTAL_MAX_VMS_PER_CHECKOUT})


@require_POST
def checkout(request: HttpRequest, pool_name: str) -> HttpResponse:
    pool = get_object_or_404(Pool, name=pool_name)
    try:
        [lease] = services.checkout(user=request.user, pools=[pool])
    except services.PoolEmpty:
        return _on_demand(request, [pool])
    except VmPortalError as exc:
        messages.error(request, str(exc))
        return redirect("home")
    messages.success(request, f"{lease.vm.name} is yours until {lease.expires_at:%H:%M} UTC.")
    if request.htmx.boosted:  # type: ignore[attr-defined]  # django-htmx's middleware
        # The home page's boosted form: the lease page itself, and the address bar set to it,
        # saves the redirect's second request (a reload then GETs the lease page). A form
        # without JavaScript still gets the redirect, so a reload never posts again. The
        # lease as checkout made it, VM row and pool included: no read back (a move to
        # another host is decided by a job after the commit, and the page polls for it).
        return push_url(_lease_page(request, lease), reverse("lease-detail", args=[lease.pk]))
    return redirect("lease-detail", lease_id=lease.pk)


@require_POST
def checkout_many(request: HttpRequest) -> HttpResponse:
    """n VMs from one pool in one all-or-nothing checkout."""
    form = MultiCheckoutForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Choose a pool and between 1 and {settings.VMPORTAL_MAX_VMS_PER_CHECKOUT} VMs.")
        return redirect("home")
    pool, count = form.cleaned_data["pool"], form.cleaned_data["count"]
    try:
        leases = services.checkout(user=request.user, pools=[pool] * count)
    except services.PoolEmpty as exc:
        if request.POST.get("ondemand"):
            return _on_demand(request, [pool] * count)
        messages.error(request, str(exc))
        return redirect("home")
    except VmPortalError as exc:
        messages.error(request, str(exc))
        return redirect("home")
    names = ", ".join(lease.vm.name for lease in leases)
    messages.success(request, f"{names} {'is' if count == 1 else 'are'} yours until {leases[0].expires_at:%H:%M} UTC.")
    return redirect("my-leases")


def _on_demand(request: HttpRequest, pools: list[Pool]) -> HttpResponse:
    """No ready VM: clone them for this person, and show the request's progress."""
    try:
        req = ondemand.request_vms(user=request.user, pools=pools)
    except VmPortalError as exc:
        messages.error(request, f"{pools[0].name} has no ready VM, and one cannot be made for you: {exc}")
        return redirect("home")
    # No flash message: the request page says "being made for you" only while it is.
    return redirect("ondemand-detail", request_id=req.request_id)


@require_POST
def request_on_demand(request: HttpRequest, pool_name: str) -> HttpResponse:
    return _on_demand(request, [get_object_or_404(Pool.objects.select_related("template"), name=pool_name)])


def _request_or_404(request: HttpRequest, request_id: str) -> OnDemandRequest | HttpResponse:
    try:
        return ondemand.get_request_for(request.user, request_id)
    except VmPortalError as exc:
        return render(request, "error.html", {"message": str(exc)}, status=exc.http_status)


def ondemand_detail(request: HttpRequest, request_id: str) -> HttpResponse:
    req = _request_or_404(request, request_id)
    if isinstance(req, HttpResponse):
        return req
    return render(request, "leases/ondemand_detail.html", ondemand.describe(req))


def ondemand_status(request: HttpRequest, request_id: str) -> HttpResponse:
    """The live part of the request page; once ready, the browser moves to the lease."""
    req = _request_or_404(request, request_id)
    if isinstance(req, HttpResponse):
        return req
    if req.status == OnDemandRequest.Status.READY and htmx_partial(request):
        ids = ondemand.lease_ids(req)
        return HttpResponseClientRedirect(reverse("lease-detail", args=[ids[0]]) if len(ids) == 1
                                          else reverse("my-leases"))
    # A failed or cancelled request will not change by itself: its poll is told to stop.
    return render_polled(request, "leases/partials/_ondemand_status.html", ondemand.describe(req),
                         settled=htmx_partial(request) and not req.is_pending)


def _refused(request: HttpRequest, exc: VmPortalError, back: HttpResponse) -> HttpResponse:
    """An action that was refused: "no such thing" as a 404 page, anything else as a
    message on the page the person came from (``back``)."""
    if exc.http_status == 404:
        return render(request, "error.html", {"message": str(exc)}, status=404)
    messages.error(request, str(exc))
    return back


@require_POST
def ondemand_cancel(request: HttpRequest, request_id: str) -> HttpResponse:
    try:
        req = ondemand.cancel(user=request.user, request_id=request_id)
    except VmPortalError as exc:
        return _refused(request, exc, redirect("ondemand-detail", request_id=request_id))
    messages.success(request, "Request cancelled; anything made for it will be destroyed.")
    return redirect("ondemand-detail", request_id=req.request_id)


@require_POST
def ondemand_retry(request: HttpRequest, request_id: str) -> HttpResponse:
    try:
        req = ondemand.retry(user=request.user, request_id=request_id)
    except VmPortalError as exc:
        return _refused(request, exc, redirect("ondemand-detail", request_id=request_id))
    messages.info(request, "Trying again.")
    return redirect("ondemand-detail", request_id=req.request_id)


def my_leases(request: HttpRequest) -> HttpResponse:
    leases, listing = sort_and_search(
        request, Lease.objects.active().filter(user=request.user).select_related("vm", "pool"),
        columns={"vm": ("vm__name",), "state": ("vm__state", "vm__name"), "pool": ("pool__name", "vm__name"),
                 "address": ("vm__ip_address",), "checked_out": ("started_at",), "expires": ("expires_at",)},
        default="expires", search=("vm__name", "vm__hostname", "vm__ip_address", "pool__name"))
    recent = timezone.now() - timedelta(hours=1)
    requests = OnDemandRequest.objects.filter(user=request.user).filter(
        Q(status__in=(OnDemandRequest.Status.QUEUED, OnDemandRequest.Status.PROVISIONING))
        | Q(status=OnDemandRequest.Status.FAILED, finished_at__gte=recent)
    ).exclude(request_id__in=request.session.get(DISMISSED, [])).order_by("-created_at")[:20]
    return render(request, "leases/my_leases.html", {"leases": leases, "requests": requests, "listing": listing})


@require_POST
def ondemand_dismiss(request: HttpRequest, request_id: str) -> HttpResponse:
    """Hide a failed or cancelled request from My VMs (in this session; the request stays on record)."""
    req = _request_or_404(request, request_id)
    if isinstance(req, HttpResponse):
        return req
    if not req.is_pending:
        request.session[DISMISSED] = [*request.session.get(DISMISSED, [])[-49:], req.request_id]
    return redirect("my-leases")


def lease_detail(request: HttpRequest, lease_id: int) -> HttpResponse:
    try:
        lease = services.get_lease_for(request.user, lease_id)
    except VmPortalError as exc:
        return render(request, "error.html", {"message": str(exc)}, status=exc.http_status)
    return _lease_page(request, lease)


def _lease_page(request: HttpRequest, lease: Lease) -> HttpResponse:
    # Extending stops at the pool's longest lease, counted from check-out; the page says so up front.
    max_lifetime = lease.pool.lease_max_lifetime if lease.pool else None
    return render(request, "leases/lease_detail.html", {
        **_vm_tasks_context(lease), "extend_choices": EXTEND_CHOICES,
        "max_lifetime_hours": max_lifetime and max_lifetime / timedelta(hours=1),
        "extend_limit": max_lifetime and lease.started_at + max_lifetime,
    })


@require_POST
def extend(request: HttpRequest, lease_id: int) -> HttpResponse:
    by = EXTEND_CHOICES.get(request.POST.get("hours", ""))
    # My VMs extends inline and stays on the list; the lease page comes back to itself.
    to_list = request.POST.get("back") == "my-leases"
    back = redirect("my-leases") if to_list else redirect("lease-detail", lease_id=lease_id)
    try:
        if by is None:
            raise VmPortalError("Choose how long to extend by: 1, 4 or 24 hours.")
        lease = services.extend(user=request.user, lease_id=lease_id, by=by)
    except VmPortalError as exc:
        return _refused(request, exc, back)
    messages.success(request, f"Extended until {lease.expires_at:%Y-%m-%d %H:%M} UTC"
                              f"{f' ({lease.vm.name})' if to_list else ''}.")
    return back


@require_POST
def return_lease(request: HttpRequest, lease_id: int) -> HttpResponse:
    try:
        lease = services.return_lease(user=request.user, lease_id=lease_id)
    except VmPortalError as exc:
        return _refused(request, exc, redirect("lease-detail", lease_id=lease_id))
    messages.success(request, f"{lease.vm.name} returned; it will be destroyed and the pool refilled.")
    return redirect("my-leases")


def _vm_tasks_context(lease: Lease) -> dict:
    tasks = list(lease.vm_tasks.order_by("-created_at"))
    return {"lease": lease, "vm_tasks": tasks, "max_disk_gb": vmtasks.MAX_DISK_GB,
            "tasks_pending": any(t.status == VMTask.Status.QUEUED for t in tasks),
            "snapshots": [t for t in tasks if t.kind == VMTask.Kind.SNAPSHOT and t.status == VMTask.Status.DONE]}


def lease_vm_tasks(request: HttpRequest, lease_id: int) -> HttpResponse:
    """The lease page's snapshots and disks, polled while a task is queued; it stops once none is."""
    try:
        lease = services.get_lease_for(request.user, lease_id)
    except VmPortalError as exc:
        return render(request, "error.html", {"message": str(exc)}, status=exc.http_status)
    context = _vm_tasks_context(lease)
    return render_polled(request, "leases/partials/_vm_tasks.html", context, settled=not context["tasks_pending"])


def _vm_task_action(request: HttpRequest, lease_id: int, start, done: str) -> HttpResponse:
    back = redirect("lease-detail", lease_id=lease_id)
    try:
        task = start()
    except VmPortalError as exc:
        return _refused(request, exc, back)
    messages.success(request, done.format(vm=task.lease.vm.name))
    return back


@require_POST
def lease_snapshot(request: HttpRequest, lease_id: int) -> HttpResponse:
    return _vm_task_action(request, lease_id, lambda: vmtasks.snapshot(user=request.user, lease_id=lease_id),
                           "Taking a snapshot of {vm}; it is listed below when done.")


@require_POST
def lease_revert(request: HttpRequest, lease_id: int) -> HttpResponse:
    snapshot_id = request.POST.get("snapshot", "")
    return _vm_task_action(request, lease_id,
                           lambda: vmtasks.revert(user=request.user, lease_id=lease_id, snapshot_id=snapshot_id),
                           "Reverting {vm} to the snapshot.")


@require_POST
def lease_add_disk(request: HttpRequest, lease_id: int) -> HttpResponse:
    def start() -> VMTask:
        raw = request.POST.get("size_gb", "").strip()
        # The service checks the range, as for the APIs; here only "is it a whole number?".
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
            raise VmPortalError(f"A disk must be between 1 and {vmtasks.MAX_DISK_GB} GB.")
        return vmtasks.add_disk(user=request.user, lease_id=lease_id, size_gb=int(raw))
    return _vm_task_action(request, lease_id, start, "Adding a disk to {vm}.")


@require_POST
def lease_power(request: HttpRequest, lease_id: int) -> HttpResponse:
    kind = request.POST.get("kind", "")
    return _vm_task_action(request, lease_id, lambda: vmtasks.power(user=request.user, lease_id=lease_id, kind=kind),
                           "{vm}: " + dict(VMTask.Kind.choices).get(kind, "").lower() + " asked for.")
