"""Host load page, under manage/ (vmportal/urls.py)."""

from django.urls import path

from apps.inventory import views

urlpatterns = [
    path("hosts/", views.host_load, name="hosts"),
]
