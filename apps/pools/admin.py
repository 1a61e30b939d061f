from django.contrib import admin

from apps.audit.admin_mixins import LargeTableAdmin
from apps.pools import autosize, models
from apps.pools import reconfigure as services
from apps.pools.forms import PoolForm, PoolScheduleForm


class TemplateCopyInline(admin.TabularInline):
    model = models.TemplateCopy
    extra = 0
    readonly_fields = ["cluster", "moid", "snapshot_moid", "status", "status_reason", "progress"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("cluster")  # read-only: one query per copy otherwise


@admin.register(models.Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "os_name", "vcenter", "source", "status"]
    list_filter = ["vcenter", "status", "source"]
    readonly_fields = ["status", "status_reason", "status_changed_at"]
    inlines = [TemplateCopyInline]


class PoolScheduleInline(admin.TabularInline):
    """The pool page's schedule rows: the same form and checks, saved and audited by autosize."""

    model = models.PoolSchedule
    form = PoolScheduleForm
    extra = 0


@admin.register(models.Pool)
class PoolAdmin(admin.ModelAdmin):
    """The pages' form and services: the same checks, and the same audit rows."""

    form = PoolForm
    list_display = ["name", "template", "cluster", "size", "linked_clones", "enabled", "health"]
    list_filter = ["enabled", "health"]
    readonly_fields = ["health", "health_reason"]
    inlines = [PoolScheduleInline]

    def save_model(self, request, obj, form, change):
        if not change:
            services.create_pool(pool=obj)
            return
        changes = {name: getattr(obj, name) for name in form.changed_data if name in services.AUDITED_FIELDS}
        if changes:
            services.update_pool(pool_id=obj.pk, changes=changes)

    def save_formset(self, request, form, formset, change):
        if formset.model is models.PoolSchedule:
            autosize.save_schedules(pool=form.instance, formset=formset)
        else:
            super().save_formset(request, form, formset, change)

    def has_delete_permission(self, request, obj=None):
        return False  # a pool is drained and disabled on its page; its VMs need destroying first


@admin.register(models.VM)
class VMAdmin(LargeTableAdmin):
    list_display = ["name", "pool", "state", "host", "ip_address", "created_at"]
    # Nullable foreign keys: the changelist's own select_related() skips them (one query per row).
    list_select_related = ["pool", "host"]
    # Newest first as the model's -created_at, through the primary key: created_at has no
    # index, and VMs are never deleted, so that order sorted every VM ever made per page.
    ordering = ["-pk"]
    # An id box and the current object's name rather than a list of every pool, template,
    # cluster and host (twice) as options: those lists were most of a change page's time.
    raw_id_fields = ["vcenter", "pool", "template", "cluster", "host", "moving_to"]
    list_filter = ["state", "pool"]
    search_fields = ["name", "moid", "ip_address", "hostname"]
    # State changes go through services (transition map + audit), never a raw edit.
    readonly_fields = ["state", "state_reason", "state_changed_at", "moid", "instance_uuid", "tries"]
