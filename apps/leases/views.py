from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from apps.core.errors import VmPortalError
from apps.leases import services
from apps.leases.models import Lease
from apps.pools.models import Pool

EXTEND_CHOICES = {"1": timedelta(hours=1), "4": timedelta(hours=4), "24": timedelta(hours=24)}
MAX_VMS_PER_CHECKOUT = 5


class MultiCheckoutForm(forms.Form):
    pool = forms.ModelChoiceField(queryset=Pool.objects.filter(enabled=True).order_by("name"), to_field_name="name",
                                  empty_label=None)
    count = forms.IntegerField(min_value=1, max_value=MAX_VMS_PER_CHECKOUT, initial=2)


@require_POST
def checkout(request: HttpRequest, pool_name: str) -> HttpResponse:
    pool = get_object_or_404(Pool, name=pool_name)
    try:
        [lease] = services.checkout(user=request.user, pools=[pool])
    except VmPortalError as exc:
        messages.error(request, str(exc))
        return redirect("home")
    messages.success(request, f"{lease.vm.name} is yours until {lease.expires_at:%H:%M} UTC.")
    return redirect("lease-detail", lease_id=lease.pk)


@require_POST
def checkout_many(request: HttpRequest) -> HttpResponse:
    """n VMs from one pool in one all-or-nothing checkout."""
    form = MultiCheckoutForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Choose a pool and between 1 and {MAX_VMS_PER_CHECKOUT} VMs.")
        return redirect("home")
    pool, count = form.cleaned_data["pool"], form.cleaned_data["count"]
    try:
        leases = services.checkout(user=request.user, pools=[pool] * count)
    except VmPortalError as exc:
        messages.error(request, str(exc))
        return redirect("home")
    names = ", ".join(lease.vm.name for lease in leases)
    messages.success(request, f"{names} {'is' if count == 1 else 'are'} yours until {leases[0].expires_at:%H:%M} UTC.")
    return redirect("my-leases")


def my_leases(request: HttpRequest) -> HttpResponse:
    leases = Lease.objects.active().filter(user=request.user).select_related("vm", "pool").order_by("expires_at")
    return render(request, "leases/my_leases.html", {"leases": leases})


def lease_detail(request: HttpRequest, lease_id: int) -> HttpResponse:
    try:
        lease = services.get_lease_for(request.user, lease_id)
    except VmPortalError as exc:
        return render(request, "error.html", {"message": str(exc)}, status=exc.http_status)
    return render(request, "leases/lease_detail.html", {"lease": lease, "extend_choices": EXTEND_CHOICES})


@require_POST
def extend(request: HttpRequest, lease_id: int) -> HttpResponse:
    by = EXTEND_CHOICES.get(request.POST.get("hours", ""))
    try:
        if by is None:
            raise VmPortalError("Choose how long to extend by: 1, 4 or 24 hours.")
        lease = services.extend(user=request.user, lease_id=lease_id, by=by)
        messages.success(request, f"Extended until {lease.expires_at:%Y-%m-%d %H:%M} UTC.")
    except VmPortalError as exc:
        if exc.http_status == 404:
            return render(request, "error.html", {"message": str(exc)}, status=404)
        messages.error(request, str(exc))
    return redirect("lease-detail", lease_id=lease_id)


@require_POST
def return_lease(request: HttpRequest, lease_id: int) -> HttpResponse:
    try:
        lease = services.return_lease(user=request.user, lease_id=lease_id)
    except VmPortalError as exc:
        if exc.http_status == 404:
            return render(request, "error.html", {"message": str(exc)}, status=404)
        messages.error(request, str(exc))
        return redirect("lease-detail", lease_id=lease_id)
    messages.success(request, f"{lease.vm.name} returned; it will be destroyed and the pool refilled.")
    return redirect("my-leases")
