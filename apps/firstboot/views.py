"""Pages: a pool's first boot and the address ranges (admins), SSH keys (everyone), and the
reveal of a leased VM's password (its lessee and admins)."""

from __future__ import annotations

from django.contrib import messages
from django.db import transaction
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from apps.audit import services as audit
from apps.core.errors import VmPortalError
from apps.core.htmx import htmx_partial
from apps.core.permissions import admin_required
from apps.firstboot import access
from apps.firstboot.forms import AddressRangeForm, PoolFirstBootForm, SSHKeyForm
from apps.firstboot.models import AddressRange, PoolFirstBoot, SSHKey
from apps.pools.models import Pool

# Fields whose values may be secret (or contain secrets): the audit log says they changed, not how.
_OPAQUE = {"user_data", "meta_data", "guest_password", "authorized_keys"}


def _audit_view(cfg: PoolFirstBoot, fields) -> dict:
    out = {}
    for name in fields:
        if name in _OPAQUE:
            out[name] = "(changed)"
        else:
            value = getattr(cfg, name)
            out[name] = str(value) if value is not None else None
    return out


@admin_required
def pool_firstboot(request: HttpRequest, pool_id: int) -> HttpResponse:
    pool = get_object_or_404(Pool.objects.select_related("template", "cluster", "datastore"), pk=pool_id)
    cfg = PoolFirstBoot.objects.filter(pool=pool).first() or PoolFirstBoot(pool=pool)
    form = PoolFirstBootForm(request.POST or None, instance=cfg, pool=pool)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            before = _audit_view(PoolFirstBoot.objects.get(pk=cfg.pk), form.changed_data) if cfg.pk else {}
            saved = form.save()
            if form.changed_data:
                audit.record("pool.firstboot_changed", target=pool, pool=pool, before=before,
                             after=_audit_view(saved, form.changed_data),
                             message=f"first boot: {saved.get_method_display()}")
        messages.success(request, f"Saved first boot of {pool.name}. New clones use it; ready VMs keep theirs.")
        return redirect("firstboot:pool", pool_id=pool.pk)
    return render(request, "firstboot/pool_firstboot.html",
                  {"pool": pool, "form": form, "cfg": cfg}, status=400 if form.errors else 200)


@admin_required
def address_ranges(request: HttpRequest) -> HttpResponse:
    form = AddressRangeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            rng = form.save()
            audit.record("addressrange.created", target=rng, after=form.cleaned_data | {
                "first": str(rng.first), "last": str(rng.last), "gateway": str(rng.gateway or "")})
        messages.success(request, f"Address range {rng.name} created ({rng.size} addresses).")
        return redirect("firstboot:ranges")
    ranges = AddressRange.objects.annotate(used=Count("allocations")).prefetch_related("pools__pool")
    return render(request, "firstboot/address_ranges.html", {"ranges": ranges, "form": form},
                  status=400 if form.errors else 200)


@admin_required
def address_range_edit(request: HttpRequest, range_id: int) -> HttpResponse:
    rng = get_object_or_404(AddressRange, pk=range_id)
    form = AddressRangeForm(request.POST or None, instance=rng)
    if request.method == "POST" and request.POST.get("delete"):
        if rng.pools.exists() or rng.allocations.exists():
            messages.error(request, f"{rng.name} is used by pools or live VMs; detach it from their pools first.")
            return redirect("firstboot:range", range_id=rng.pk)
        with transaction.atomic():
            audit.record("addressrange.deleted", target=rng, before={"name": rng.name})
            rng.delete()
        messages.success(request, "Address range deleted.")
        return redirect("firstboot:ranges")
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            rng = form.save()
            audit.record("addressrange.changed", target=rng, after={k: str(form.cleaned_data[k])
                                                                    for k in form.changed_data})
        messages.success(request, f"Saved {rng.name}. Addresses already handed out stay with their VMs.")
        return redirect("firstboot:ranges")
    return render(request, "firstboot/address_range_edit.html", {"range": rng, "form": form},
                  status=400 if form.errors else 200)


def ssh_keys(request: HttpRequest) -> HttpResponse:
    form = SSHKeyForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            key = access.add_ssh_key(user=request.user, name=form.cleaned_data["name"],
                                       public_key=form.cleaned_data["public_key"])
        except VmPortalError as exc:
            form.add_error("public_key", str(exc))
        else:
            messages.success(request, f"Added {key.name} ({key.fingerprint}). It goes into VMs you check out "
                                      "from pools with guest access.")
            return redirect("firstboot:ssh-keys")
    if form.errors:
        status = 400
    keys = SSHKey.objects.filter(user=request.user)
    return render(request, "firstboot/ssh_keys.html", {"form": form, "keys": keys}, status=status)


@require_POST
def ssh_key_delete(request: HttpRequest, key_id: int) -> HttpResponse:
    try:
        access.delete_ssh_key(user=request.user, key_id=key_id)
    except VmPortalError as exc:
        messages.error(request, str(exc))
        return redirect("firstboot:ssh-keys")
    messages.success(request, "Key removed. VMs you already have keep it until they are returned.")
    return redirect("firstboot:ssh-keys")


@require_POST
def lease_password(request: HttpRequest, lease_id: int) -> HttpResponse:
    """The VM's first-boot password, behind a deliberate click (POST + CSRF, audited)."""
    try:
        secret = access.lease_credentials(user=request.user, lease_id=lease_id)
    except VmPortalError as exc:
        return render(request, "error.html", {"message": str(exc)}, status=exc.http_status)
    template = "firstboot/partials/_password.html" if htmx_partial(request) else "firstboot/password_page.html"
    response = render(request, template, {"secret": secret, "lease_id": lease_id})
    response["Cache-Control"] = "no-store"  # a password must not sit in a browser or proxy cache
    return response
