from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"

    def ready(self) -> None:
        from django_auth_ldap.backend import ldap_error

        from apps.accounts.backends import note_directory_error

        ldap_error.connect(note_directory_error, dispatch_uid="vmportal-directory-error")
