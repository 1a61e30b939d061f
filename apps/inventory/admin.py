from django import forms
from django.contrib import admin

from apps.audit.admin_mixins import AuditedAdmin, LargeTableAdmin
from apps.inventory import models


class VCenterForm(forms.ModelForm):
    # Write-only: the stored password is never sent back to the browser.
    password = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        required=False,
        help_text="Leave empty to keep the stored password.",
    )

    class Meta:
        model = models.VCenter
        fields = [
            "name", "host", "username", "password", "insecure", "ca_bundle", "thumbprint",
            "task_limit", "enabled",
        ]

    def clean_password(self):
        value = self.cleaned_data.get("password")
        if not value:
            if self.instance.pk is None:
                raise forms.ValidationError("A new vCenter needs a password.")
            return self.instance.password
        return value


class PowerStateFilter(admin.SimpleListFilter):
    """vSphere's three power states, not a DISTINCT over every inventory VM on each page."""

    title = "power state"
    parameter_name = "power_state"

    def lookups(self, request, model_admin):
        return [("poweredOn", "powered on"), ("poweredOff", "powered off"), ("suspended", "suspended")]

    def queryset(self, request, queryset):
        return queryset.filter(power_state=self.value()) if self.value() else queryset


@admin.register(models.VCenter)
class VCenterAdmin(AuditedAdmin):
    form = VCenterForm
    audit_prefix = "vcenter"
    list_display = ["name", "host", "username", "insecure", "status", "latency_ms", "last_sync_at"]
    readonly_fields = ["status", "status_reason", "latency_ms", "last_sync_at"]


class InventoryAdmin(LargeTableAdmin):
    """Inventory mirrors vCenter; edits here would be overwritten by the next sync."""

    list_display = ["name", "moid", "vcenter", "synced_at"]
    list_filter = ["vcenter"]
    search_fields = ["name", "moid"]

    def has_add_permission(self, request):
        return False


for model in (models.Datacenter, models.Cluster, models.Datastore, models.Network):
    admin.site.register(model, InventoryAdmin)


@admin.register(models.Host)
class HostAdmin(InventoryAdmin):
    list_display = [
        "name", "cluster", "connection_state", "in_maintenance", "config_issues",
        "cpu_usage_mhz", "memory_usage_mb",
    ]
    list_filter = ["vcenter", "cluster", "connection_state", "in_maintenance"]
    list_select_related = ["cluster"]  # nullable: select_related() alone skips it (one query per host)


@admin.register(models.HostLoadSample)
class HostLoadSampleAdmin(LargeTableAdmin):
    list_display = ["host", "at", "cpu_usage_mhz", "memory_usage_mb"]
    list_filter = ["host"]


@admin.register(models.Folder)
class FolderAdmin(AuditedAdmin, InventoryAdmin):
    audit_prefix = "folder"
    list_display = ["path", "vcenter", "purge_unknown"]
    fields = ["path", "purge_unknown", "purge_allowlist"]
    readonly_fields = ["path"]


@admin.register(models.InventoryVM)
class InventoryVMAdmin(InventoryAdmin):
    list_display = ["name", "path", "power_state", "is_template", "host", "guest_ip", "marker"]
    list_select_related = ["host"]  # nullable: select_related() alone skips it
    list_filter = ["vcenter", "is_template", PowerStateFilter]
    search_fields = ["name", "path", "instance_uuid", "guest_ip"]
    raw_id_fields = ["host", "folder"]  # an id box, not every host and folder as options
