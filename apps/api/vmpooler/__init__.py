"""vmpooler v3 compatibility: the routes, request and response shapes of vmpooler's API.

vmpooler's "hostname" is our VM.name, handed out as <name>.<domain> (the pool's domain, or
VMPORTAL_API_DOMAIN). The reads vmpooler serves without a token are public here too unless
VMPORTAL_API_PUBLIC_READS is off; everything else needs a token, only a lease's owner or
an admin may change or return it, config changes need an admin, and nothing returns
credentials.

One module per group of routes (vms, ondemand, tokens, status, config), the helpers they
share in _common; the views are re-exported here for apps/api/urls.py.
"""

from apps.api.vmpooler.config import (
    config,
    config_clonetarget,
    config_poolsize,
    config_poolsize_undo,
    config_pooltemplate,
    config_pooltemplate_undo,
    poolreset,
)
from apps.api.vmpooler.ondemand import ondemand_collection, ondemand_item
from apps.api.vmpooler.status import (
    dashboard_pool,
    dashboard_running,
    poolstat,
    status,
    summary,
    summary_part,
    totalrunning,
)
from apps.api.vmpooler.tokens import token_collection, token_item
from apps.api.vmpooler.vms import vm_collection, vm_disk, vm_dispatch, vm_revert, vm_snapshot

__all__ = [
    "config", "config_clonetarget", "config_poolsize", "config_poolsize_undo", "config_pooltemplate",
    "config_pooltemplate_undo", "dashboard_pool", "dashboard_running", "ondemand_collection", "ondemand_item",
    "poolreset", "poolstat", "status", "summary", "summary_part", "token_collection", "token_item", "totalrunning",
    "vm_collection", "vm_disk", "vm_dispatch", "vm_revert", "vm_snapshot",
]
