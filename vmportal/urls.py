from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("apps.accounts.urls")),  # sign-in and sign-out, local and directory
    path("admin/", admin.site.urls),
    path("django-rq/", include("django_rq.urls")),
    path("", include("apps.firstboot.urls")),  # before manage/: its pages live under /manage/ too
    path("manage/", include("apps.adminui.urls")),
    path("", include("apps.api.urls")),
    path("", include("apps.leases.urls")),
    path("", include("apps.ui.urls")),
]
