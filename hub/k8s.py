"""Scale-out: Helm values generated from the same settings file.

``medhub k8s-values`` writes the values for the Zero to JupyterHub chart (:data:`CHART_VERSION`).
They hold no second translation of the settings: they put the validated settings in the hub
pod (a settings document, :func:`medhub.settings.to_document`) and have the pod's
``hub.extraConfig`` call :func:`medhub.config.configure_pod`, the function ``medhub run`` uses,
so the authenticator, the spawner's hooks, the services (audit, batch, idle culler), roles and
scopes are the same everywhere. The values add what only the chart can do: medhub's hub image
(JupyterHub 6), the audit log's volumes and key, the hub Service's ports for the services and
the network policies around them, and the shape of users' pods (image, storage, uid). Secrets
never go into the file: the client secret, the crypt key and the audit key come from the
Kubernetes Secret :data:`SECRET_NAME`.

``medhub k8s-values --chart dask-gateway`` writes the values for the dask-gateway chart, for
users who outgrow one machine: Dask clusters of the notebook image, authenticated by the hub,
sized by the same profiles and seeing the same grants (:mod:`medhub.gateway_options`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medlib import contract

from . import grants
from .access import spawn as access_spawn
from .catalog import Dataset, granted
from .errors import HubConfigError
from .gpus import ClusterGPUs
from .settings import SETTINGS_ENV, Profile, Settings, to_document

log = logging.getLogger("medhub.k8s")
SECRET_NAME = "medhub-secrets"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_INVENTORY_RBAC = "images/k8s/gpu-inventory.yaml"  # what lets the hub list nodes and pods
CHART_VERSION = "4.4.0"  # Zero to JupyterHub, the version images/k8s/README.md installs
GATEWAY_CHART_VERSION = "2026.3.0"  # dask-gateway
HUB_SERVICE, PROXY_SERVICE = "hub", "proxy-public"  # the chart's Services (fullnameOverride unset)
SETTINGS_MOUNT = "/usr/local/etc/medhub/settings.json"  # the settings document in the hub pod
AUDIT_MOUNT, AUDIT_ANCHOR_MOUNT = "/srv/medhub-audit", "/srv/medhub-audit-anchor"  # the audit claims
AUDIT_KEY_MOUNT, AUDIT_KEY = "/etc/medhub/audit", "audit-hmac-key"  # the audit key: its folder, its Secret key
NOTEBOOK_UID, NOTEBOOK_GID = 1000, 100  # the notebook image's unprivileged account
GATEWAY_SERVICE = "dask-gateway"  # its name as a hub service, and its path: /services/dask-gateway
GATEWAY_OPTIONS_SOURCE = Path(__file__).with_name("gateway_options.py")
#: A server token's default scopes, plus access to the gateway, which it checks. (The gateway
#: reads the user's name and groups from /hub/api/user, which any token may read of its owner.)
GATEWAY_SERVER_TOKEN_SCOPES = ["users:activity!user", "access:servers!server",
                               f"access:services!service={GATEWAY_SERVICE}"]
#: Added to JupyterHub's default user role (a token has only its owner's scopes).
GATEWAY_USER_SCOPES = [f"access:services!service={GATEWAY_SERVICE}"]


def _image(ref: str) -> dict[str, str]:
    name, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "latest")
    return {"name": name, "tag": tag}


def _secret_env(key: str) -> dict[str, Any]:
    return {"valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": key}}}


def gpu_count(settings: Settings, profile: Profile) -> int:
    """The GPUs ``profile`` asks for on a node ("all" is ``kubernetes.gpus_per_node``)."""
    if profile.gpus >= 0:
        return profile.gpus
    if not settings.kubernetes.gpus_per_node:
        raise HubConfigError(f"{settings.source}: profiles '{profile.slug}' asks for all GPUs; set "
                             "kubernetes.gpus_per_node to the GPU count of a node")
    return settings.kubernetes.gpus_per_node


def profile_list(settings: Settings) -> list[dict[str, Any]]:
    """KubeSpawner ``profile_list`` entries for the settings' profiles."""
    profiles = []
    for p in settings.profiles:
        override: dict[str, Any] = {}
        if p.cpu_limit is not None:
            override["cpu_limit"] = p.cpu_limit
        if p.mem_limit is not None:
            override["mem_limit"] = p.mem_limit
        gpus = gpu_count(settings, p)
        if gpus:
            override["extra_resource_limits"] = {"nvidia.com/gpu": str(gpus)}
            override["extra_resource_guarantees"] = {"nvidia.com/gpu": str(gpus)}
        entry = {
            "display_name": p.display_name,
            "slug": p.slug,
            "description": p.description,
            "kubespawner_override": override,
        }
        if p.default:
            entry["default"] = True
        profiles.append(entry)
    return profiles


async def cluster_gpus(api: Any) -> ClusterGPUs | None:
    """The cluster's GPUs now: each schedulable node's allocatable ``nvidia.com/gpu``, less what
    its running and pending pods ask for. None where the hub may not list nodes and pods (without
    the ClusterRole of :data:`GPU_INVENTORY_RBAC`)."""
    from kubernetes_asyncio.client.rest import ApiException

    try:
        nodes = await api.list_node()
        pods = await api.list_pod_for_all_namespaces(field_selector="status.phase!=Succeeded,status.phase!=Failed")
    except ApiException as e:
        if e.status in (401, 403):
            log.warning("the hub may not list nodes and pods (%s): GPU profiles are offered without checking "
                        "the cluster's GPUs; apply %s", e.status, GPU_INVENTORY_RBAC)
            return None
        raise
    used: Counter[str] = Counter()
    for pod in pods.items:
        for container in (pod.spec.containers or []) if pod.spec.node_name else []:
            asked = (container.resources and (container.resources.requests or container.resources.limits)) or {}
            used[pod.spec.node_name] += int(asked.get(GPU_RESOURCE, 0))
    return ClusterGPUs(tuple(
        (total, max(total - used[node.metadata.name], 0))
        for node in nodes.items if not (node.spec and node.spec.unschedulable)
        for total in [int((node.status.allocatable or {}).get(GPU_RESOURCE, 0))]))


def profiles_for_groups(settings: Settings) -> Callable[[Any], Any]:
    """A KubeSpawner ``profile_list`` callable: the :func:`profile_list` entries of the profiles
    offered to the user's groups (:meth:`medhub.settings.Profile.offered_to`), those that need
    more GPUs than any node has free marked unavailable (:func:`gpu_check_hook` refuses them)."""
    entries = dict(zip((p.slug for p in settings.profiles), profile_list(settings)))

    async def offered(spawner: Any) -> list[dict[str, Any]]:
        member = [g.name for g in spawner.user.groups]
        mine = [p for p in settings.profiles if p.offered_to(member)]
        gpus = await cluster_gpus(spawner.api) if any(p.gpus for p in mine) else None
        shown = []
        for p in mine:
            why = gpus.unavailable(gpu_count(settings, p)) if gpus is not None else None
            entry = entries[p.slug]
            shown.append({**entry, "description": f"{entry['description']} (unavailable: {why})"} if why else entry)
        return shown

    return offered


def gpu_check_hook(settings: Settings) -> Callable[[Any], Any]:
    """A KubeSpawner ``pre_spawn_hook`` refusing, with a sentence, a profile that needs more GPUs
    than any node has free (a pod that asks for them would wait, and never start)."""
    by_slug = {p.slug: p for p in settings.profiles}

    async def hook(spawner: Any) -> None:
        from .spawner import refusal

        profile = by_slug.get((spawner.user_options or {}).get("profile", "")) or settings.default_profile
        gpus = gpu_count(settings, profile)
        found = await cluster_gpus(spawner.api) if gpus else None
        why = found.unavailable(gpus) if found is not None else None
        if why:
            spawner.start_error = f"profile {profile.slug!r} needs GPUs: {why}"
            raise refusal(409, f"The profile '{profile.display_name}' needs {gpus} GPU{'s' * (gpus != 1)} and {why}. "
                               "Choose a profile without GPUs, or try again later.")

    return hook


def dataset_volumes_hook(catalog: tuple[Dataset, ...], claim_prefix: str, grants_key_file: str,
                         access_store: str = "", direct_download: tuple[str, ...] = ("anonymized",)
                         ) -> Callable[[Any], None]:
    """A KubeSpawner ``pre_spawn_hook`` mounting the user's granted datasets read-only: their
    groups' and their personal grants in force (``access_store``, :mod:`medhub.access`), noting
    which server mounts which dataset; downloads off where one's sensitivity is not in
    ``direct_download``.

    Each local dataset ``<id>`` is the PersistentVolumeClaim ``<claim_prefix><id>``
    (provisioned by the site's administrator), mounted at ``/datasets/<id>`` (a grant of some
    versions: each at ``/datasets/<id>/<version>``, the claim's sub-path); datasets at a
    URL are read there. The server gets its signed grants manifest (key in the hub's
    persistent volume, made on first use).
    """
    def hook(spawner: Any) -> None:
        groups = sorted(g.name for g in spawner.user.groups)
        standing = granted(catalog, groups)
        personal = access_spawn.personal_grants(access_store, spawner.user.name, catalog, standing)
        mine = [d for d in catalog if d in standing or d.id in personal]
        access_spawn.note_mounts(access_store, spawner.user.name, spawner.name or "", mine, personal)
        spawner._personal = personal  # for the audit log's mount events
        for d in mine:
            if not d.is_local:
                continue
            volume = f"dataset-{d.id}"
            spawner.volumes = [*spawner.volumes, {
                "name": volume,
                "persistentVolumeClaim": {"claimName": claim_prefix + d.id, "readOnly": True},
            }]
            only = personal.get(d.id, {}).get("versions")  # a grant of some versions: those alone
            spawner.volume_mounts = [*spawner.volume_mounts, *(
                [{"name": volume, "mountPath": f"{contract.DATASETS_ROOT}/{d.id}/{v}", "subPath": v, "readOnly": True}
                 for v in only] if only else
                [{"name": volume, "mountPath": f"{contract.DATASETS_ROOT}/{d.id}", "readOnly": True}])]
        spawner.mounted_datasets = lambda: [d for d in mine if d.is_local]  # for the audit log's mount events
        spawner.mounts_read_only = True
        signer = grants.GrantSigner(grants_key_file)
        spawner.environment = {
            **spawner.environment,
            contract.GROUPS_ENV: ",".join(groups),
            contract.DATASETS_DIR_ENV: contract.DATASETS_ROOT,
            contract.DOWNLOADS_ENV: access_spawn.downloads(mine, direct_download),
            contract.GRANTS_ENV: signer.manifest(spawner.user.name, groups, catalog, mine, contract.DATASETS_ROOT,
                                                 personal),
            contract.GRANTS_KEY_ENV: signer.public_key,
        }

    return hook


def values(settings: Settings) -> dict[str, Any]:
    """The Zero to JupyterHub values for ``settings``.

    Raises:
        HubConfigError: what the hub pod would refuse (an "all GPUs" profile without the node's size).
    """
    k8s = settings.kubernetes
    for profile in settings.profiles:
        gpu_count(settings, profile)
    services = {"medhub-audit": settings.audit.port, "medhub-batch": settings.batch.port,
                contract.INGEST_SERVICE: settings.ingest.port, contract.ACCESS_SERVICE: settings.access.port}
    ports = list(services.values())
    # the ingest service publishes delivered versions into the versioned datasets' volumes
    delivered = [d for d in settings.datasets if d.versioned]
    proxy = {"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "proxy"}}}
    hub_pod = {"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "hub"}}}
    result: dict[str, Any] = {
        "hub": {
            "image": _image(k8s.hub_image),
            "command": ["tini", "--"],  # the chart's arguments run jupyterhub; the image's entrypoint runs medhub
            "extraFiles": {"medhub-settings": {"mountPath": SETTINGS_MOUNT, "data": to_document(settings)}},
            "extraEnv": {
                SETTINGS_ENV: SETTINGS_MOUNT,
                "MEDHUB_OIDC_CLIENT_SECRET": _secret_env("oidc-client-secret"),
                "JUPYTERHUB_CRYPT_KEY": _secret_env("crypt-key"),
            },
            "extraConfig": {"medhub": "from medhub.config import configure_pod\nconfigure_pod(c)\n"},
            "extraVolumes": [
                {"name": "medhub-audit", "persistentVolumeClaim": {"claimName": k8s.audit_claim}},
                {"name": "medhub-audit-anchor", "persistentVolumeClaim": {"claimName": k8s.audit_anchor_claim}},
                {"name": "medhub-audit-key", "secret": {"secretName": SECRET_NAME, "defaultMode": 0o400,
                                                        "items": [{"key": AUDIT_KEY, "path": AUDIT_KEY}]}},
                *({"name": f"dataset-{d.id}", "persistentVolumeClaim": {"claimName": k8s.datasets_claim_prefix + d.id}}
                  for d in delivered),
            ],
            "extraVolumeMounts": [
                {"name": "medhub-audit", "mountPath": AUDIT_MOUNT},
                {"name": "medhub-audit-anchor", "mountPath": AUDIT_ANCHOR_MOUNT},
                {"name": "medhub-audit-key", "mountPath": AUDIT_KEY_MOUNT, "readOnly": True},
                *({"name": f"dataset-{d.id}", "mountPath": d.location} for d in delivered),
            ],
            # the audit, batch, ingest and access services listen in the hub pod; the proxy routes to them
            "service": {"extraPorts": [{"name": name, "port": port, "targetPort": port}
                                       for name, port in services.items()]},
            "networkPolicy": {"ingress": [{"from": [proxy, hub_pod],
                                           "ports": [{"port": port, "protocol": "TCP"} for port in ports]}]},
        },
        "proxy": {"service": {"type": "ClusterIP"}},
        "singleuser": {
            "image": _image(k8s.image),
            "uid": NOTEBOOK_UID,
            "fsGid": NOTEBOOK_GID,
            "storage": {"type": "dynamic", "capacity": k8s.storage_capacity,
                        "homeMountPath": settings.docker.home_mount},
            "networkPolicy": network_policy(settings),
            # the chart's proxy admits pods labelled so to its public port (the services' way in)
            "extraLabels": {"hub.jupyter.org/network-access-proxy-http": "true"},
        },
        "cull": {"enabled": False},  # medhub's configuration runs the culler ([culler])
    }
    if settings.dask_gateway.enabled:
        # the chart makes the gateway's token (its Secret "hub") for a service named here; the
        # hub routes /services/dask-gateway/ to the gateway's proxy
        result["hub"]["services"] = {GATEWAY_SERVICE: {"display": False,
                                                       "url": f"http://{settings.dask_gateway.service}"}}
    return result


def gateway_environment(settings: Settings) -> dict[str, str]:
    """What users' servers need so that ``dask_gateway.Gateway()`` needs no arguments."""
    return {
        "DASK_GATEWAY__ADDRESS": f"http://{PROXY_SERVICE}/services/{GATEWAY_SERVICE}",
        "DASK_GATEWAY__PUBLIC_ADDRESS": f"/services/{GATEWAY_SERVICE}/",
        "DASK_GATEWAY__PROXY_ADDRESS": f"gateway://{settings.dask_gateway.service}:80",
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
    }


def network_policy(settings: Settings) -> dict[str, Any]:
    """Zero to JupyterHub's ``singleuser.networkPolicy``: the rules of medhub's Docker network on
    Kubernetes. A user's pod is reached only by the hub and the proxy (the chart's own rules),
    and reaches only the hub's API (the chart's rule), the proxy's public port (where the audit
    and batch services are) and DNS; never another user's pod, a node, the cloud's metadata
    server or any other address, private or public (``egress`` takes a site's additions)."""
    egress = [{"to": [{"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "proxy"}}}],
               "ports": [{"port": 8000, "protocol": "TCP"}]}]
    if settings.dask_gateway.enabled:  # the user's Dask clusters, through the gateway's traefik
        egress.append({"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "dask-gateway",
                                                               "app.kubernetes.io/component": "traefik"}}}]})
    return {
        "enabled": True,
        "ingress": [],
        "allowedIngressPorts": [],
        "interNamespaceAccessLabels": "ignore",
        "egress": egress,
        "egressAllowRules": {"cloudMetadataServer": False, "privateIPs": False, "nonPrivateIPs": False,
                             "dnsPortsCloudMetadataServer": True, "dnsPortsKubeSystemNamespace": True,
                             "dnsPortsPrivateIPs": True},
    }


def gateway_spec(settings: Settings) -> dict[str, Any]:
    """The data :func:`medhub.gateway_options.make_options` works from (see its module)."""
    return {
        "profiles": [{"slug": p.slug, "display_name": p.display_name, "cpu_limit": p.cpu_limit,
                      "mem_limit": p.mem_limit, "gpus": gpu_count(settings, p), "groups": list(p.groups)}
                     for p in settings.profiles],
        "default_profile": settings.default_profile.slug,
        "datasets": [{"id": d.id, "readers": list(d.readers())} for d in settings.datasets if d.is_local],
        "claim_prefix": settings.kubernetes.datasets_claim_prefix,
        "mount_root": contract.DATASETS_ROOT,
        "uid": NOTEBOOK_UID,
        "gid": NOTEBOOK_GID,
    }


def gateway_values(settings: Settings) -> dict[str, Any]:
    """Values of the dask-gateway Helm chart, installed in the hub's namespace beside it.

    Schedulers and workers run the notebook image (the same Python, torch and medlib as the
    user's server), unprivileged; the cluster options are the hub's profiles, and workers see
    the user's granted datasets read-only (:mod:`medhub.gateway_options`, embedded).
    """
    gateway = settings.dask_gateway
    if not gateway.enabled:
        raise HubConfigError(f"{settings.source}: [dask_gateway] enabled is false; set it to true to "
                             "give users Dask clusters (and regenerate the hub's values: they register it)")
    options = (
        GATEWAY_OPTIONS_SOURCE.read_text()
        + f"\nc.Backend.cluster_options = make_options({gateway_spec(settings)!r},\n"
        + '    dict(c.KubeClusterConfig.get("environment", {})))  # the chart\'s backend.environment\n'
        + 'c.ClusterConfig.scheduler_cmd = ["dask", "scheduler"]\n'
        + 'c.ClusterConfig.worker_cmd = ["dask", "worker"]\n'
        + f"c.ClusterConfig.idle_timeout = {gateway.idle_timeout}\n"
        + f"c.ClusterConfig.cluster_max_workers = {gateway.max_workers}\n"
        # tokens must carry access to this service (GATEWAY_SERVER_TOKEN_SCOPES gives servers theirs)
        + f"c.JupyterHubAuthenticator.jupyterhub_service_name = {GATEWAY_SERVICE!r}\n"
    )
    return {
        "gateway": {
            "prefix": f"/services/{GATEWAY_SERVICE}",
            "auth": {"type": "jupyterhub"},
            "backend": {"image": _image(settings.kubernetes.image)},
            "extraConfig": {"medhub-cluster-options": options},
        },
        "traefik": {"service": {"type": "ClusterIP"}},
    }
