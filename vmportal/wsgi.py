import gc
import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vmportal.settings")
application = get_wsgi_application()

# A web host whose key cannot read the stored vCenter passwords disagrees with the other
# hosts: refuse to start (gunicorn reports the message) rather than fail every request.
from apps.inventory.checks import refuse_undecryptable_secrets  # noqa: E402

refuse_undecryptable_secrets()

# What is loaded by now (Django, the apps, and every view of the URL conf, imported here
# rather than on the first request) lives as long as the process: frozen out of the garbage
# collector's reach, a full collection no longer walks it. Unfrozen, the first one under load
# held the GIL for 70-93 ms (bench/checkout.py, 16 clients), every request in flight waiting.
get_resolver().url_patterns  # noqa: B018
gc.freeze()
