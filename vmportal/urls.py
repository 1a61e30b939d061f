from django.contrib import admin
from django.urls import include, path

from apps.audit import urls as audit_urls
from apps.firstboot import api as firstboot_api  # noqa: F401 - adds its route to the native API's urls
from apps.inventory import urls as inventory_urls
from apps.jobs import dashboard
from apps.pools import urls as pool_urls
from vmportal import views

# Only the web serves the admin: its modules are found here, not at start of every process
# (settings: SimpleAdminConfig).
admin.autodiscover()

# The admin pages live in the apps that own their data; together they keep the manage/ prefix
# and the one "adminui" URL namespace they have always been reversed by.
manage_pages = [*pool_urls.urlpatterns, *audit_urls.urlpatterns, *inventory_urls.urlpatterns]

urlpatterns = [
    path("", include("apps.accounts.urls")),  # sign-in and sign-out, local and directory
    path("admin/r/<str:content_type_id>/<path:object_id>/", admin.site.admin_view(dashboard.admin_shortcut)),
    path("admin/", admin.site.urls),
    path("django-rq/", include(dashboard.urls())),  # django_rq.urls, with 404s for ids that do not exist
    path("", include("apps.firstboot.urls")),  # before manage/: its pages live under /manage/ too
    path("manage/", include((manage_pages, "adminui"))),
    path("", include("apps.api.urls")),
    path("", include("apps.leases.urls")),
    path("", include("apps.core.urls")),  # healthz
    path("favicon.ico", views.favicon, name="favicon"),
]

# Pages get vmportal's own error pages; API paths keep their JSON errors (vmportal/views.py).
handler400 = views.bad_request
handler403 = views.permission_denied
handler404 = views.page_not_found
handler500 = views.server_error
