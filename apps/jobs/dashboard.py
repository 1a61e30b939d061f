"""django-rq's queue dashboard (at /django-rq/ and in the Django admin), answering a clear 404
where its own views raise on ids that do not exist (a job that expired, a worker that stopped,
no RQ scheduler), and where the admin's generic pages would query the table its placeholder
model does not have."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import admin
from django.contrib.contenttypes import views as contenttype_views
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ImproperlyConfigured
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import URLPattern
from django_rq import views
from django_rq.admin import QueueAdmin
from django_rq.models import Dashboard
from django_rq.urls import get_admin_urlpatterns, get_api_urlpatterns
from rq.exceptions import NoSuchJobError

NO_JOB = "No such job: it finished and its record expired, or it never existed."
# worker_details raises ValueError for a malformed key and AssertionError for a worker that is gone.
_NOT_FOUND: dict[Callable, tuple[tuple[type[BaseException], ...], str]] = {
    views.delete_job: ((NoSuchJobError,), NO_JOB),
    views.requeue_job_view: ((NoSuchJobError,), NO_JOB),
    views.enqueue_job: ((NoSuchJobError,), NO_JOB),
    views.stop_job: ((NoSuchJobError,), NO_JOB),
    views.result_detail: ((NoSuchJobError,), NO_JOB),
    views.worker_details: ((ValueError, AssertionError), "No such worker: it stopped, or the key is wrong."),
    views.scheduler_jobs: ((ImproperlyConfigured, IndexError),
                           "No such RQ scheduler: vmportal's workers schedule with `rqworker --with-scheduler`, "
                           "whose jobs the queue pages list."),
}


def _guarded(view: Callable) -> Callable:
    if view not in _NOT_FOUND:
        return view
    errors, message = _NOT_FOUND[view]

    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except errors:
            raise Http404(message) from None

    return guarded


def urls() -> tuple[list, str]:
    """For ``include()`` at /django-rq/, in place of ``django_rq.urls``."""
    return get_api_urlpatterns() + get_admin_urlpatterns(view_wrapper=_guarded), "django_rq"


class DashboardAdmin(QueueAdmin):
    """The dashboard in the admin. It has no objects: their pages are a 404, not a query of a table
    that does not exist."""

    def get_urls(self) -> list[URLPattern]:
        urls = super().get_urls()
        for pattern in urls:
            callback = getattr(pattern, "callback", None)
            original = getattr(callback, "__wrapped__", None)
            # Admin-wrapped django_rq views: guard the view inside the admin's permission check.
            if original in _NOT_FOUND:
                pattern.callback = self._rewrap(original)
        return urls

    def _rewrap(self, view: Callable) -> Callable:
        guarded = _guarded(view)

        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            request.current_app = self.admin_site.name
            return self.admin_site.admin_view(guarded)(request, *args, **kwargs)

        return wrapper

    def _no_objects(self, *args: Any, **kwargs: Any) -> HttpResponse:
        raise Http404("The queue dashboard has no objects; open it at /admin/django_rq/dashboard/.")

    change_view = delete_view = history_view = _no_objects


def register(site: admin.AdminSite) -> None:
    if site.is_registered(Dashboard):
        site.unregister(Dashboard)
        site.register(Dashboard, DashboardAdmin)


def admin_shortcut(request: HttpRequest, content_type_id: str, object_id: str) -> HttpResponse:
    """The admin's "view on site" redirect (/admin/r/<type>/<id>/), a 404 for a type that has no
    table (django_rq's placeholder model) instead of a database error."""
    try:
        model = ContentType.objects.get_for_id(int(content_type_id)).model_class()
    except (ValueError, ContentType.DoesNotExist):
        raise Http404("No such content type.") from None
    if model is None or not model._meta.managed:
        raise Http404("Objects of this kind have no page.")
    return contenttype_views.shortcut(request, content_type_id, object_id)
