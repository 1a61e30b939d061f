"""Templates: register an existing vSphere template, deploy one from an OVF/OVA, derive one
from another through a build VM, capture a pool VM; and prepare each for linked clones.

Each way has its module (register, deploy, builds, copies); recovery fails what a job left
in flight, through the runner's on_failure and on_lost hooks. Callers use the names below.
"""

from apps.pools.templates.builds import (
    capture_name_clash,
    derive_name_clash,
    discard_build,
    request_capture,
    start_derive,
    start_vm_capture,
)
from apps.pools.templates.copies import ensure_copy, remove_unused_copies, start_copy_to_cluster
from apps.pools.templates.deploy import DeployTarget, deployable_url, start_ovf_deploy
from apps.pools.templates.recovery import forget_failed_template, sweep_uploads
from apps.pools.templates.register import prepare_copy, register_template

__all__ = [
    "DeployTarget",
    "capture_name_clash",
    "deployable_url",
    "derive_name_clash",
    "discard_build",
    "ensure_copy",
    "forget_failed_template",
    "prepare_copy",
    "register_template",
    "remove_unused_copies",
    "request_capture",
    "start_copy_to_cluster",
    "start_derive",
    "start_ovf_deploy",
    "start_vm_capture",
    "sweep_uploads",
]
