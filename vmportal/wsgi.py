import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vmportal.settings")
application = get_wsgi_application()

# A web host whose key cannot read the stored vCenter passwords disagrees with the other
# hosts: refuse to start (gunicorn reports the message) rather than fail every request.
from apps.inventory.checks import refuse_undecryptable_secrets  # noqa: E402

refuse_undecryptable_secrets()
