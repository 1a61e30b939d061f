from django.contrib import admin

from apps.pools import models


class TemplateCopyInline(admin.TabularInline):
    model = models.TemplateCopy
    extra = 0
    readonly_fields = ["cluster", "moid", "snapshot_moid", "status", "status_reason", "progress"]


@admin.register(models.Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "os_name", "vcenter", "source", "status"]
    list_filter = ["vcenter", "status", "source"]
    readonly_fields = ["status", "status_reason", "status_changed_at"]
    inlines = [TemplateCopyInline]


@admin.register(models.Pool)
class PoolAdmin(admin.ModelAdmin):
    list_display = ["name", "template", "cluster", "size", "linked_clones", "enabled", "health"]
    list_filter = ["enabled", "health"]
    readonly_fields = ["health", "health_reason"]


@admin.register(models.VM)
class VMAdmin(admin.ModelAdmin):
    list_display = ["name", "pool", "state", "host", "ip_address", "created_at"]
    list_filter = ["state", "pool"]
    search_fields = ["name", "moid", "ip_address", "hostname"]
    # State changes go through services (transition map + audit), never a raw edit.
    readonly_fields = ["state", "state_reason", "state_changed_at", "moid", "instance_uuid", "tries"]
