from django.contrib import admin
from django.http import HttpRequest

from apps.jobs import dashboard
from apps.jobs.models import Job

dashboard.register(admin.site)


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "queue", "status", "object_type", "object_id", "created_at", "finished_at"]
    list_filter = ["status", "kind", "queue"]
    readonly_fields = [f.name for f in Job._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
