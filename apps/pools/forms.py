"""Forms of the pool and template pages (and Django admin's pool form)."""

from __future__ import annotations

from datetime import time
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator
from django.forms.models import inlineformset_factory

from apps.core.errors import VmPortalError
from apps.core.fields import AsciiDurationField, AsciiIntegerField
from apps.inventory.models import Cluster, Datastore, Folder, InventoryVM, Network, VCenter
from apps.pools import reconfigure as services
from apps.pools.models import MAX_VCPUS, WEEKDAYS, Pool, PoolSchedule, Template
from apps.pools.templates import capture_name_clash, deployable_url, derive_name_clash


class PoolForm(forms.ModelForm):
    """Create/edit a pool. The service's validate_pool gives the cross-row reasons."""

    class Meta:
        model = Pool
        fields = [
            "name", "description", "template", "cluster", "folder", "datastore", "network", "size",
            "autosize", "min_size", "max_size",
            "linked_clones", "balance_hosts", "cpus", "memory_mb", "ready_ttl", "lease_lifetime", "lease_max_lifetime",
            "boot_timeout", "max_tries", "enabled", "domain", "aliases", "alias_weight",
        ]
        help_texts = {
            "ready_ttl": "e.g. 12:00:00 for 12 hours; empty: never recycle.",
            "lease_lifetime": "HH:MM:SS, e.g. 02:00:00.",
            "lease_max_lifetime": "HH:MM:SS or 'D HH:MM:SS', at least the lifetime.",
            "boot_timeout": "HH:MM:SS, from 00:00:01 to 24:00:00.",
        }
        field_classes = {
            **dict.fromkeys(["size", "min_size", "max_size", "cpus", "memory_mb", "max_tries", "alias_weight"],
                            AsciiIntegerField),
            **dict.fromkeys(["ready_ttl", "lease_lifetime", "lease_max_lifetime", "boot_timeout"], AsciiDurationField),
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["template"].queryset = Template.objects.select_related("vcenter").order_by("name")
        self.fields["cluster"].queryset = Cluster.objects.select_related("vcenter").order_by("name")
        self.fields["alias_weight"].required = False  # left empty: the default weight
        # Every clone goes into this folder: without one, vCenter refuses each clone with a
        # "ManagedObjectNotFound" that names no cause.
        folder = self.fields["folder"]
        folder.required = True
        folder.error_messages["required"] = "Choose the VM folder clones go into (synced from vCenter)."
        folder.queryset = Folder.objects.filter(path__contains="/vm").select_related("vcenter").order_by("path")
        folder.label_from_instance = lambda f: f.path
        self.fields["size"].help_text = f"Ready VMs to keep, 0 to {settings.VMPORTAL_MAX_POOL_SIZE}."
        if self.instance.autosize:
            self.fields["size"].help_text += " Set by automatic sizing while it is on."
        self.fields["autosize"].help_text = (
            "The pool manager sets the size from recent checkouts, within the smallest and largest size.")
        for name, what in (("min_size", "Smallest"), ("max_size", "Largest")):
            self.fields[name].required = False  # left empty: 0, as for a pool sized by hand
            self.fields[name].help_text = (f"{what} size automatic sizing sets, 0 to "
                                           f"{settings.VMPORTAL_MAX_POOL_SIZE}.")
        self.fields["cpus"].help_text = f"1 to {MAX_VCPUS}; empty: the template's."
        self.fields["memory_mb"].help_text = "MB, within the cluster's largest host; empty: the template's."
        self.fields["lease_lifetime"].help_text = (
            f"HH:MM:SS, e.g. 02:00:00; at most {settings.VMPORTAL_MAX_LEASE_HOURS} hours.")

    def clean_min_size(self) -> int:
        return self.cleaned_data.get("min_size") or 0

    def clean_max_size(self) -> int:
        return self.cleaned_data.get("max_size") or 0

    def clean_alias_weight(self) -> int:
        return self.cleaned_data.get("alias_weight") or Pool._meta.get_field("alias_weight").default

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


class AsciiTimeField(forms.TimeField):
    def to_python(self, value: Any) -> time | None:
        if isinstance(value, str) and not value.isascii():  # strptime's \d reads other scripts' digits
            raise ValidationError(self.error_messages["invalid"], code="invalid")
        return super().to_python(value)


class PoolScheduleForm(forms.ModelForm):
    """One schedule entry; PoolSchedule.clean checks its size against the pool's bounds."""

    weekdays = forms.MultipleChoiceField(
        label="Days", choices=[(str(i), name) for i, name in enumerate(WEEKDAYS)],
        widget=forms.CheckboxSelectMultiple, error_messages={"required": "Pick at least one day."})

    class Meta:
        model = PoolSchedule
        fields = ["weekdays", "start", "end", "min_size"]
        labels = {"start": "From", "end": "Until", "min_size": "At least"}
        field_classes = {"start": AsciiTimeField, "end": AsciiTimeField, "min_size": AsciiIntegerField}
        widgets = {name: forms.TimeInput(format="%H:%M", attrs={"type": "time"}) for name in ("start", "end")}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A new row offers working hours, so an admin types only the size; a row left at
        # that offer is unchanged and not saved.
        self.initial["weekdays"] = list(self.instance.weekdays) if self.instance.pk else list("01234")
        if not self.instance.pk:
            self.initial.setdefault("start", time(8))
            self.initial.setdefault("end", time(18))
        self.fields["min_size"].help_text = f"0 to {settings.VMPORTAL_MAX_POOL_SIZE}, within the pool's sizes."

    def clean_weekdays(self) -> str:
        return "".join(sorted(set(self.cleaned_data["weekdays"])))


# Entries may overlap: where they do, the larger size applies.
PoolScheduleFormSet = inlineformset_factory(
    Pool, PoolSchedule, form=PoolScheduleForm, extra=1, can_delete=True, can_delete_extra=False,
    max_num=20, validate_max=True)


SCHEDULE_PREFIX = "schedule"


def schedule_formset(data: Any, pool: Pool) -> Any:
    """The pool page's schedule rows, bound only when the post carries them (a post of the
    settings alone, e.g. from a script, leaves the schedules as they are)."""
    bound = data is not None and f"{SCHEDULE_PREFIX}-TOTAL_FORMS" in data
    return PoolScheduleFormSet(data if bound else None, instance=pool, prefix=SCHEDULE_PREFIX)


class ReconfigureForm(forms.Form):
    size = AsciiIntegerField(min_value=0, help_text="Ready VMs to keep (0 drains the pool).")
    template = forms.ModelChoiceField(queryset=Template.objects.order_by("name"))
    cluster = forms.ModelChoiceField(queryset=Cluster.objects.order_by("name"), label="Clone target (cluster)")

    def __init__(self, *args, pool: Pool, **kwargs):
        self.pool = pool
        kwargs.setdefault("initial", {"size": pool.size, "template": pool.template_id, "cluster": pool.cluster_id})
        super().__init__(*args, **kwargs)
        limit = settings.VMPORTAL_MAX_POOL_SIZE  # the same bound as the API's and the model's
        self.fields["size"].max_value = limit
        self.fields["size"].validators.append(MaxValueValidator(limit))
        self.fields["size"].widget.attrs["max"] = limit
        self.fields["size"].help_text = f"Ready VMs to keep, 0 to {limit} (0 drains the pool)."
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


# --- templates: deploy, derive, capture -------------------------------------------------------


def _slug_name_free(vcenter: VCenter | None, name: str | None) -> str | None:
    if vcenter is not None and name and Template.objects.filter(vcenter=vcenter, name=name).exists():
        return f"A template named {name} already exists on {vcenter}."
    return None


class DeployOvfForm(forms.Form):
    """Deploy a template from an OVF/OVA URL or an uploaded OVA (streamed to disk by the view)."""

    name = forms.SlugField(max_length=80, help_text="Short name pools refer to; also the VM name in vSphere.")
    os_name = forms.CharField(max_length=120, required=False, label="OS")
    url = forms.CharField(required=False, max_length=1024, label="OVF/OVA URL",
                          help_text="http(s) URL of an .ova, or of an .ovf with its disks next to it.")
    file = forms.FileField(required=False, label="Or upload an OVA",
                           widget=forms.ClearableFileInput(attrs={"accept": ".ova"}))
    cluster = forms.ModelChoiceField(queryset=Cluster.objects.none(), label="Cluster")
    folder = forms.ModelChoiceField(queryset=Folder.objects.none(), label="VM folder")
    datastore = forms.ModelChoiceField(queryset=Datastore.objects.none())
    network = forms.ModelChoiceField(queryset=Network.objects.none(), required=False,
                                     help_text="Every network the package names is connected to this one.")

    def __init__(self, *args, upload_error: str = "", **kwargs):
        kwargs.setdefault("auto_id", "deploy_%s")  # unique ids beside the register form on one page
        super().__init__(*args, **kwargs)
        self.upload_error = upload_error
        self.fields["cluster"].queryset = Cluster.objects.select_related("vcenter").order_by("vcenter__name", "name")
        self.fields["folder"].queryset = Folder.objects.filter(path__contains="/vm").order_by("path")
        self.fields["datastore"].queryset = Datastore.objects.order_by("name")
        self.fields["network"].queryset = Network.objects.order_by("name")
        self.fields["folder"].label_from_instance = lambda f: f.path
        templates_folder = Folder.objects.filter(path__endswith="/vm/Templates").first()
        if templates_folder is not None:
            self.fields["folder"].initial = templates_folder.pk
        limit = settings.VMPORTAL_OVF_MAX_BYTES
        self.fields["file"].help_text = f"Up to {limit / 1024**3:.1f} GiB; stored until the deploy has sent it."

    def clean_url(self) -> str:
        url = (self.cleaned_data.get("url") or "").strip()
        if not url:
            return ""
        try:
            return deployable_url(url)
        except (ValueError, VmPortalError) as exc:  # VmPortalError: the URL policy refused it
            raise ValidationError(str(exc)) from None

    def clean_file(self):
        f = self.cleaned_data.get("file")
        if f and not f.name.lower().endswith(".ova"):
            raise ValidationError("Upload an .ova file (an .ovf alone has no disks; give its URL instead).")
        return f

    def clean(self):
        data = super().clean()
        if self.upload_error:
            self.add_error("file", self.upload_error)
            return data
        url, upload = data.get("url"), data.get("file")
        if (url or self.data.get("url", "").strip()) and upload:  # also when the URL itself was refused
            raise ValidationError("Give a URL or upload a file, not both.")
        if not url and not upload and not self.errors.get("url") and not self.errors.get("file"):
            raise ValidationError("Give the URL of an OVF/OVA or upload an OVA.")
        cluster = data.get("cluster")
        if cluster is None:
            return data
        for key in ("folder", "datastore", "network"):
            obj = data.get(key)
            if obj is not None and obj.vcenter_id != cluster.vcenter_id:
                self.add_error(key, f"{obj} is not on {cluster.vcenter}, where cluster {cluster} is.")
        ds = data.get("datastore")
        if ds is not None and ds.vcenter_id == cluster.vcenter_id and not ds.hosts.filter(cluster=cluster).exists():
            self.add_error("datastore", f"No host of cluster {cluster} mounts datastore {ds}.")
        if not cluster.resource_pool_moid:
            self.add_error("cluster", f"Cluster {cluster} has no resource pool in the synced inventory; sync it.")
        clash = _slug_name_free(cluster.vcenter, data.get("name"))
        if clash:
            self.add_error("name", clash)
        return data


class DeriveTemplateForm(forms.Form):
    name = forms.SlugField(max_length=80, label="New template name")
    os_name = forms.CharField(max_length=120, required=False, label="OS")
    cluster = forms.ModelChoiceField(queryset=Cluster.objects.none(), label="Build in cluster")

    def __init__(self, *args, source: Template, **kwargs):
        self.source = source
        kwargs.setdefault("auto_id", "derive_%s")
        super().__init__(*args, **kwargs)
        ready_in = source.copies.filter(status="ready").values_list("cluster_id", flat=True)
        self.fields["cluster"].queryset = Cluster.objects.filter(vcenter_id=source.vcenter_id).order_by("name")
        first = next(iter(ready_in), None)
        if first is not None:
            self.fields["cluster"].initial = first
        self.fields["os_name"].initial = source.os_name

    def clean(self):
        data = super().clean()
        if self.source.status != "ready":
            raise ValidationError(f"Template {self.source} is {self.source.get_status_display().lower()}; "
                                  "derive from a ready template.")
        clash = _slug_name_free(self.source.vcenter, data.get("name"))
        if not clash and data.get("name") and data.get("cluster"):
            clash = derive_name_clash(self.source, data["cluster"], data["name"])
        if clash:
            self.add_error("name", clash)
        return data


class CaptureVMForm(forms.Form):
    name = forms.SlugField(max_length=80, label="New template name")
    os_name = forms.CharField(max_length=120, required=False, label="OS")

    def __init__(self, *args, vm, **kwargs):
        self.vm = vm
        super().__init__(*args, **kwargs)
        if vm.template is not None:
            self.fields["os_name"].initial = vm.template.os_name

    def clean(self):
        data = super().clean()
        clash = _slug_name_free(self.vm.vcenter, data.get("name"))
        if not clash and data.get("name"):
            clash = capture_name_clash(self.vm, data["name"])
        if clash:
            self.add_error("name", clash)
        return data


class CopyTemplateForm(forms.Form):
    cluster = forms.ModelChoiceField(queryset=Cluster.objects.none(), label="Copy to cluster")

    def __init__(self, *args, template: Template, **kwargs):
        kwargs.setdefault("auto_id", "copy_%s")
        super().__init__(*args, **kwargs)
        have = template.copies.exclude(status="failed").values_list("cluster_id", flat=True)
        self.fields["cluster"].queryset = (Cluster.objects.filter(vcenter_id=template.vcenter_id)
                                           .exclude(pk__in=list(have)).order_by("name"))
