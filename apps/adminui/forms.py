from __future__ import annotations

from datetime import datetime, time, timedelta

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from apps.adminui import services
from apps.inventory.models import Cluster, InventoryVM, VCenter
from apps.pools.models import Pool, Template


class PoolForm(forms.ModelForm):
    """Create/edit a pool. The service's validate_pool gives the cross-row reasons."""

    class Meta:
        model = Pool
        fields = [
            "name", "description", "template", "cluster", "folder", "datastore", "network", "size",
            "linked_clones", "cpus", "memory_mb", "ready_ttl", "lease_lifetime", "lease_max_lifetime",
            "boot_timeout", "max_tries", "enabled",
        ]
        help_texts = {
            "ready_ttl": "e.g. 12:00:00 for 12 hours; empty: never recycle.",
            "lease_lifetime": "HH:MM:SS, e.g. 02:00:00.",
            "lease_max_lifetime": "HH:MM:SS or 'D HH:MM:SS', at least the lifetime.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["template"].queryset = Template.objects.select_related("vcenter").order_by("name")
        self.fields["cluster"].queryset = Cluster.objects.select_related("vcenter").order_by("name")

    def _post_clean(self):
        # The model form calls instance.full_clean(); add the rules that need other rows.
        super()._post_clean()
        if self.errors:
            return
        if not (self.instance._state.adding or {"template", "cluster"} & set(self.changed_data)):
            return  # an unchanged template may have failed since; the pool stays editable
        try:
            services.validate_pool(self.instance)
        except ValidationError as exc:
            self._update_errors(exc)


class ReconfigureForm(forms.Form):
    size = forms.IntegerField(min_value=0, max_value=10_000, help_text="Ready VMs to keep (0 drains the pool).")
    template = forms.ModelChoiceField(queryset=Template.objects.order_by("name"))
    cluster = forms.ModelChoiceField(queryset=Cluster.objects.order_by("name"), label="Clone target (cluster)")

    def __init__(self, *args, pool: Pool, **kwargs):
        self.pool = pool
        kwargs.setdefault("initial", {"size": pool.size, "template": pool.template_id, "cluster": pool.cluster_id})
        super().__init__(*args, **kwargs)
        vc = pool.template.vcenter_id
        self.fields["template"].queryset = Template.objects.filter(vcenter_id=vc).order_by("name")
        self.fields["cluster"].queryset = Cluster.objects.filter(vcenter_id=vc).order_by("name")

    def clean(self):
        data = super().clean()
        template, cluster = data.get("template"), data.get("cluster")
        if template and cluster and (template.pk != self.pool.template_id or cluster.pk != self.pool.cluster_id):
            reason = services.template_not_ready_reason(template, cluster)
            if reason:
                raise ValidationError(reason)
        return data

    def shape(self) -> services.PoolShape:
        d = self.cleaned_data
        return services.PoolShape(size=d["size"], template_id=d["template"].pk, cluster_id=d["cluster"].pk,
                                  enabled=self.pool.enabled)


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False, max_length=150)
    action = forms.CharField(required=False, max_length=64, help_text='A prefix such as "pool." works too.')
    pool = forms.ModelChoiceField(queryset=Pool.objects.order_by("name"), required=False)
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To (inclusive)", widget=forms.DateInput(attrs={"type": "date"}))
    q = forms.CharField(required=False, max_length=200, label="Search")

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise ValidationError("The start date is after the end date.")
        return data

    def filters(self) -> dict:
        d = self.cleaned_data
        tz = timezone.get_current_timezone()
        since = timezone.make_aware(datetime.combine(d["since"], time.min), tz) if d.get("since") else None
        until = (
            timezone.make_aware(datetime.combine(d["until"], time.min), tz) + timedelta(days=1)
            if d.get("until") else None
        )
        return {"actor": d.get("actor", "").strip(), "action": d.get("action", "").strip(), "pool": d.get("pool"),
                "since": since, "until": until, "q": d.get("q", "").strip()}


class InventoryTemplateChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: InventoryVM) -> str:
        return obj.path or obj.name


class RegisterTemplateForm(forms.Form):
    source = InventoryTemplateChoice(
        queryset=InventoryVM.objects.none(), required=False, label="Template from the inventory",
        empty_label="— pick a vSphere template —",
    )
    inventory_path = forms.CharField(
        required=False, max_length=1024, help_text="Or type the path, e.g. DC0/vm/Templates/debian-12."
    )
    vcenter = forms.ModelChoiceField(queryset=VCenter.objects.order_by("name"), required=False,
                                     help_text="Needed only with a typed path.")
    name = forms.SlugField(max_length=80, help_text="Short name pools refer to, e.g. debian-12.")
    os_name = forms.CharField(max_length=120, required=False, label="OS")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["source"].queryset = InventoryVM.objects.filter(is_template=True).order_by("path", "name")

    def clean(self):
        data = super().clean()
        source, path, vc = data.get("source"), (data.get("inventory_path") or "").strip(), data.get("vcenter")
        if source is not None:
            data["vcenter"] = source.vcenter
            data["inventory_path"] = source.path or path
        elif not path:
            raise ValidationError("Pick a template from the inventory or type its inventory path.")
        elif vc is None:
            self.add_error("vcenter", "Choose the vCenter the typed path belongs to.")
        clash = data.get("vcenter") and data.get("name") and Template.objects.filter(
            vcenter=data["vcenter"], name=data["name"]
        ).exclude(inventory_path=data.get("inventory_path", "")).exists()
        if clash:
            self.add_error("name", f"A template named {data['name']} already exists on that vCenter.")
        return data
