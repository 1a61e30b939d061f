"""Pool, template and health pages, under manage/ (vmportal/urls.py)."""

from django.urls import path

from apps.pools import views

urlpatterns = [
    path("", views.pool_list, name="pools"),
    path("pools/new/", views.pool_create, name="pool-create"),
    path("pools/<int:pool_id>/", views.pool_detail, name="pool-detail"),
    path("pools/<int:pool_id>/preview/", views.pool_preview, name="pool-preview"),
    path("pools/<int:pool_id>/reconfigure/", views.pool_reconfigure, name="pool-reconfigure"),
    path("pools/<int:pool_id>/drain/", views.pool_drain, name="pool-drain"),
    path("pools/<int:pool_id>/reset/", views.pool_reset, name="pool-reset"),
    path("templates/", views.template_list, name="templates"),
    path("templates/deploy/", views.template_deploy, name="template-deploy"),
    path("templates/<int:template_id>/", views.template_detail, name="template-detail"),
    path("templates/<int:template_id>/derive/", views.template_derive, name="template-derive"),
    path("templates/<int:template_id>/copy/", views.template_copy, name="template-copy"),
    path("templates/<int:template_id>/forget/", views.template_forget, name="template-forget"),
    path("builds/<int:build_id>/capture/", views.build_capture, name="build-capture"),
    path("builds/<int:build_id>/discard/", views.build_discard, name="build-discard"),
    path("vms/<int:vm_id>/capture/", views.vm_capture, name="vm-capture"),
    path("health/", views.health, name="health"),
    path("health.json", views.health_json, name="health-json"),
]
