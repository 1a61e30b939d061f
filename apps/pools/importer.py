"""Import a vmpooler configuration (its YAML) as vCenter, Template and Pool rows.

vmpooler keys start with a colon (``:providers:``); both spellings are accepted. Nothing
here calls vSphere: templates arrive as *pending* (register/prepare them from the
Templates page), and clusters, folders and datastores must already be in the synced
inventory. Whatever has no vmportal equivalent is reported, never silently dropped.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.text import slugify

from apps.audit import services as audit
from apps.inventory.models import Cluster, Datastore, Folder, Network, VCenter
from apps.pools.models import Pool, Template, TemplateStatus

PROVIDER_KEYS_USED = {"server", "username", "password", "insecure", "datacenter", "provider_class", "task_limit"}
# Global :config: keys we map, and the ones that are vmpooler internals with no meaning here.
CONFIG_KEYS_USED = {"task_limit", "timeout", "ready_ttl", "vm_lifetime", "max_lifetime_upper_limit",
                    "max_tries", "clone_target", "create_linked_clones", "datacenter", "domain", "backend_weight"}
POOL_KEYS_USED = {"name", "template", "folder", "datastore", "size", "timeout", "ready_ttl", "provider",
                  "clone_target", "create_linked_clone", "network", "datacenter", "vm_lifetime", "max_tries",
                  "alias", "domain", "dns_plugin"}


def _get(mapping: dict, key: str, default: Any = None) -> Any:
    if not isinstance(mapping, dict):
        return default
    if f":{key}" in mapping:
        return mapping[f":{key}"]
    return mapping.get(key, default)


def _keys(mapping: dict) -> list[str]:
    return [str(k).lstrip(":") for k in mapping] if isinstance(mapping, dict) else []


@dataclass
class ImportReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _minutes(value: Any) -> timedelta | None:
    try:
        return timedelta(minutes=float(value)) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _hours(value: Any) -> timedelta | None:
    try:
        return timedelta(hours=float(value)) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _inventory_path(datacenter: str, path: str) -> str:
    """vmpooler paths are relative to the datacenter's VM folder; ours start at the datacenter."""
    path = path.strip("/")
    if not datacenter or path.startswith(f"{datacenter}/"):
        return path
    return f"{datacenter}/vm/{path}"


@transaction.atomic
def import_config(data: dict) -> ImportReport:
    report = ImportReport()
    if not isinstance(data, dict):
        raise ValueError("The file does not hold a vmpooler configuration (expected a mapping at the top).")
    for section in _keys(data):
        if section not in ("providers", "config", "pools", "dns_configs"):
            report.unmapped.append(f":{section}: (whole section; vmportal has its own settings for this)")

    config = _get(data, "config", {}) or {}
    for key in _keys(config):
        if key not in CONFIG_KEYS_USED:
            report.unmapped.append(f":config: {key}")

    vcenters = _import_providers(_get(data, "providers", {}) or {}, config, report)
    dns_configs = _get(data, "dns_configs", {}) or {}
    for entry in _get(data, "pools", []) or []:
        _import_pool(entry, config, vcenters, report, dns_configs)
    return report


def _import_providers(providers: dict, config: dict, report: ImportReport) -> dict[str, tuple[VCenter, str]]:
    vcenters: dict[str, tuple[VCenter, str]] = {}
    for name in _keys(providers):
        spec = _get(providers, name, {}) or {}
        kind = str(_get(spec, "provider_class", name))
        if kind != "vsphere":
            report.skipped.append(f"provider {name}: provider_class {kind} is not vSphere")
            continue
        server = _get(spec, "server")
        if not server:
            report.skipped.append(f"provider {name}: no server")
            continue
        slug = slugify(name)[:64] or "vsphere"
        defaults = {
            "host": str(server), "username": str(_get(spec, "username", "")),
            "insecure": bool(_get(spec, "insecure", False)),
            "task_limit": int(_get(spec, "task_limit", _get(config, "task_limit", 10)) or 10),
        }
        vc, created = VCenter.objects.get_or_create(name=slug, defaults=defaults)
        if created:
            password = _get(spec, "password")
            if password:
                vc.password = str(password)
                vc.save(update_fields=["password"])
            audit.record("vcenter.import", target=vc, after=defaults)
            report.created.append(f"vCenter {slug} ({server})")
        else:
            report.updated.append(f"vCenter {slug} exists; left as is")
        for key in _keys(spec):
            if key not in PROVIDER_KEYS_USED:
                report.unmapped.append(f":providers: {name}: {key}")
        vcenters[name] = (vc, str(_get(spec, "datacenter", _get(config, "datacenter", "")) or ""))
    return vcenters


def _import_pool(entry: dict, config: dict, vcenters: dict[str, tuple[VCenter, str]], report: ImportReport,
                 dns_configs: dict | None = None) -> None:
    name = slugify(str(_get(entry, "name", "")))[:64]
    if not name:
        report.skipped.append(f"a pool without a name: {entry!r}"[:200])
        return
    for key in _keys(entry):
        if key not in POOL_KEYS_USED:
            report.unmapped.append(f"pool {name}: {key}")
    provider = str(_get(entry, "provider", "") or (next(iter(vcenters)) if len(vcenters) == 1 else ""))
    if provider not in vcenters:
        report.skipped.append(f"pool {name}: provider {provider or '(none)'} is not an imported vSphere provider")
        return
    vc, datacenter = vcenters[provider]
    datacenter = str(_get(entry, "datacenter", "") or datacenter)
    template_path = str(_get(entry, "template", "") or "")
    if not template_path:
        report.skipped.append(f"pool {name}: no template")
        return
    inventory_path = _inventory_path(datacenter, template_path)
    template_name = slugify(template_path.rstrip("/").rsplit("/", 1)[-1])[:80]
    template, t_created = Template.objects.get_or_create(
        vcenter=vc, name=template_name,
        defaults={"inventory_path": inventory_path, "source": Template.Source.REGISTERED,
                  "status": TemplateStatus.PENDING,
                  "status_reason": "Imported from vmpooler; register it on the Templates page to prepare it."},
    )
    if t_created:
        audit.record("template.import", target=template, after={"path": inventory_path})
        report.created.append(f"template {template_name} ({inventory_path}, pending)")

    cluster_name = _get(entry, "clone_target") or _get(config, "clone_target")
    cluster = Cluster.objects.filter(vcenter=vc, name=cluster_name).first() if cluster_name else None
    if cluster is None:
        report.skipped.append(
            f"pool {name}: cluster {cluster_name or '(no clone_target)'} is not in the synced inventory of "
            f"{vc.name}; run sync_inventory and import again"
        )
        return
    if Pool.objects.filter(name=name).exists():
        report.updated.append(f"pool {name} exists; left as is")
        return

    pool = Pool(name=name, template=template, cluster=cluster, description="Imported from vmpooler")
    pool.size = max(0, int(_get(entry, "size", 0) or 0))
    _lookup(pool, "folder", _get(entry, "folder"), report,
            lambda v: Folder.objects.filter(vcenter=vc, path=_inventory_path(datacenter, v)).first()
            or Folder.objects.filter(vcenter=vc, name=v.rstrip("/").rsplit("/", 1)[-1]).first())
    _lookup(pool, "datastore", _get(entry, "datastore"), report,
            lambda v: Datastore.objects.filter(vcenter=vc, name=v).first())
    _lookup(pool, "network", _get(entry, "network"), report,
            lambda v: Network.objects.filter(vcenter=vc, name=v).first())
    if (ttl := _minutes(_get(entry, "ready_ttl", _get(config, "ready_ttl")))) is not None:
        pool.ready_ttl = ttl
    if (boot := _minutes(_get(entry, "timeout", _get(config, "timeout")))) is not None:
        pool.boot_timeout = boot
    if (life := _hours(_get(entry, "vm_lifetime", _get(config, "vm_lifetime")))) is not None:
        pool.lease_lifetime = life
    if (cap := _hours(_get(config, "max_lifetime_upper_limit"))) is not None:
        pool.lease_max_lifetime = cap
    pool.lease_max_lifetime = max(pool.lease_max_lifetime, pool.lease_lifetime)
    linked = _get(entry, "create_linked_clone", _get(config, "create_linked_clones"))
    if linked is not None:
        pool.linked_clones = bool(linked)
    tries = _get(entry, "max_tries", _get(config, "max_tries"))
    if tries:
        pool.max_tries = max(1, int(tries))
    _import_api_names(pool, entry, config, dns_configs or {}, str(cluster_name))
    try:
        pool.full_clean()
    except ValidationError as exc:
        report.skipped.append(f"pool {name}: {'; '.join(m for ms in exc.message_dict.values() for m in ms)}")
        return
    pool.save()
    audit.record("pool.import", target=pool, pool=pool, after={"size": pool.size, "template": template.name,
                                                                "cluster": cluster.name})
    report.created.append(f"pool {name} (size {pool.size}, template {template_name}, cluster {cluster.name})")


def _import_api_names(pool: Pool, entry: dict, config: dict, dns_configs: dict, cluster_name: str) -> None:
    """vmpooler's alias (a name or a list), its per-pool domain (the pool's, its dns_plugin's,
    or the global one) and backend_weight (keyed by clone target) for checkouts by alias."""
    alias = _get(entry, "alias")
    if alias:
        pool.aliases = ",".join(str(a) for a in (alias if isinstance(alias, list) else [alias]))
    plugin = _get(dns_configs, str(_get(entry, "dns_plugin", "") or ""), {}) or {}
    domain = _get(entry, "domain") or _get(plugin, "domain") or _get(config, "domain")
    if domain:
        pool.domain = str(domain)
    weights = _get(config, "backend_weight", {}) or {}
    if isinstance(weights, dict) and cluster_name in weights:
        with contextlib.suppress(TypeError, ValueError):  # not a number: the default weight stays
            pool.alias_weight = max(1, int(weights[cluster_name]))


def _lookup(pool: Pool, attr: str, value: Any, report: ImportReport, find) -> None:
    if not value:
        return
    found = find(str(value))
    if found is None:
        report.unmapped.append(f"pool {pool.name}: {attr} {value} is not in the synced inventory (left empty)")
    else:
        setattr(pool, attr, found)
