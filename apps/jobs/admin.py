from typing import Any

from django.conf import settings
from django.contrib import admin
from django.db import connection
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.audit.admin_mixins import LargeTableAdmin
from apps.jobs import dashboard
from apps.jobs.models import Job

dashboard.register(admin.site)


class KindFilter(admin.SimpleListFilter):
    """The kinds jobs have, read by skipping through the kind index (one probe per kind), not
    by a DISTINCT over every job ever run, which read the whole table on each page."""

    title = "kind"
    parameter_name = "kind"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        with connection.cursor() as cursor:
            cursor.execute(
                "WITH RECURSIVE kinds(kind) AS (SELECT min(kind) FROM jobs_job UNION ALL"
                " SELECT (SELECT min(j.kind) FROM jobs_job j WHERE j.kind > kinds.kind) FROM kinds"
                " WHERE kinds.kind IS NOT NULL) SELECT kind FROM kinds WHERE kind IS NOT NULL"
            )
            return [(kind, kind) for (kind,) in cursor.fetchall()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(kind=self.value()) if self.value() else queryset


class QueueFilter(admin.SimpleListFilter):
    """The RQ queues of the settings: a job's queue is one of them."""

    title = "queue"
    parameter_name = "queue"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in settings.RQ_QUEUES]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(queue=self.value()) if self.value() else queryset


@admin.register(Job)
class JobAdmin(LargeTableAdmin):
    list_display = ["id", "kind", "queue", "status", "object_type", "object_id", "created_at", "finished_at"]
    list_filter = ["status", KindFilter, QueueFilter]
    readonly_fields = [f.name for f in Job._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
