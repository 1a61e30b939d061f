from django.urls import path

from apps.accounts import views

urlpatterns = [
    path("accounts/login/", views.LoginView.as_view(), name="login"),
    path("accounts/logout/", views.LogoutView.as_view(), name="logout"),
    path("oidc/authenticate/", views.OIDCAuthenticateView.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", views.OIDCCallbackView.as_view(), name="oidc_authentication_callback"),
]
