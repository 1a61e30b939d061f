from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("django-rq/", include("django_rq.urls")),
    path("", include("apps.firstboot.urls")),  # before manage/: its pages live under /manage/ too
    path("manage/", include("apps.adminui.urls")),
    path("", include("apps.api.urls")),
    path("", include("apps.leases.urls")),
    path("", include("apps.ui.urls")),
]
