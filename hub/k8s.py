"""Scale-out: Zero to JupyterHub ``values.yaml`` generated from the same settings file.

``medhub k8s-values`` writes the Helm values for the Zero to JupyterHub chart: the hub
image with medhub's OIDC authenticator, one ``profileList`` entry per profile (CPU and
memory limits, ``nvidia.com/gpu`` resource limits), per-user storage, the idle culler, and
a hub hook that mounts each granted dataset's PersistentVolumeClaim read-only at
``/datasets/<id>``. Secrets never go into the file: the client secret and the crypt key come
from the Kubernetes Secret named in :data:`SECRET_NAME`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .courses import instructor_role
from . import grants
from .errors import HubConfigError
from .catalog import Dataset, granted
from .settings import Settings

SECRET_NAME = "medhub-secrets"


def _image(ref: str) -> dict[str, str]:
    name, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "latest")
    return {"name": name, "tag": tag}


def _secret_env(key: str) -> dict[str, Any]:
    return {"valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": key}}}


def profile_list(settings: Settings) -> list[dict[str, Any]]:
    """KubeSpawner ``profile_list`` entries for the settings' profiles."""
    gpus_per_node = settings.kubernetes.gpus_per_node
    profiles = []
    for p in settings.profiles:
        override: dict[str, Any] = {}
        if p.cpu_limit is not None:
            override["cpu_limit"] = p.cpu_limit
        if p.mem_limit is not None:
            override["mem_limit"] = p.mem_limit
        gpus = p.gpus
        if gpus < 0:
            if not gpus_per_node:
                raise HubConfigError(
                    f"{settings.source}: profiles '{p.slug}' asks for all GPUs; set "
                    "kubernetes.gpus_per_node to the GPU count of a node"
                )
            gpus = gpus_per_node
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


def dataset_volumes_hook(datasets: list[dict[str, Any]], claim_prefix: str,
                         grants_key_file: str) -> Callable[[Any], None]:
    """A KubeSpawner ``pre_spawn_hook`` mounting the user's granted datasets read-only.

    Each local dataset ``<id>`` is the PersistentVolumeClaim ``<claim_prefix><id>``
    (provisioned by the site's administrator), mounted at ``/datasets/<id>``; datasets at a
    URL are read there. The server gets its signed grants manifest (key in the hub's
    persistent volume, made on first use).
    """
    catalog = [Dataset.from_dict(d) for d in datasets]

    def hook(spawner: Any) -> None:
        groups = sorted(g.name for g in spawner.user.groups)
        for d in granted(catalog, groups):
            if not d.is_local:
                continue
            volume = f"dataset-{d.id}"
            spawner.volumes = [*spawner.volumes, {
                "name": volume,
                "persistentVolumeClaim": {"claimName": claim_prefix + d.id, "readOnly": True},
            }]
            spawner.volume_mounts = [*spawner.volume_mounts, {
                "name": volume, "mountPath": f"{grants.CONTAINER_ROOT}/{d.id}", "readOnly": True,
            }]
        signer = grants.GrantSigner(grants_key_file)
        spawner.environment = {
            **spawner.environment,
            "MEDHUB_GROUPS": ",".join(groups),
            "MEDHUB_DATASETS_DIR": grants.CONTAINER_ROOT,
            grants.GRANTS_ENV: signer.manifest(spawner.user.name, groups, catalog, grants.CONTAINER_ROOT),
            grants.GRANTS_KEY_ENV: signer.public_key,
        }

    return hook


def values(settings: Settings) -> dict[str, Any]:
    """The Zero to JupyterHub values for ``settings``."""
    oidc = settings.oidc
    k8s = settings.kubernetes
    datasets = [d.to_dict() for d in settings.datasets]
    grants_code = (
        "from medhub.k8s import dataset_volumes_hook\n"
        f"c.KubeSpawner.pre_spawn_hook = dataset_volumes_hook({json.dumps(datasets)}, "
        f"{json.dumps(k8s.datasets_claim_prefix)}, {json.dumps(k8s.grants_key_file)})\n"
    )
    return {
        "hub": {
            "image": _image(k8s.hub_image),
            "config": {
                "JupyterHub": {"authenticator_class": "medhub.auth.OIDCAuthenticator"},
                "OIDCAuthenticator": {
                    "issuer": oidc.issuer,
                    "client_id": oidc.client_id,
                    "oauth_callback_url": settings.callback_url,
                    "scope": list(oidc.scopes),
                    "username_claim": oidc.username_claim,
                    "auth_state_groups_key": f"oauth_user.{oidc.groups_claim}",
                    "manage_groups": True,
                    "allowed_groups": list(settings.allowed_groups),
                    "admin_groups": list(oidc.admin_groups),
                    "enable_auth_state": True,
                    "refresh_pre_spawn": True,
                    "auth_refresh_age": oidc.refresh_age,
                    "login_service": oidc.login_service,
                },
            },
            "extraEnv": {
                "MEDHUB_OIDC_CLIENT_SECRET": _secret_env("oidc-client-secret"),
                "JUPYTERHUB_CRYPT_KEY": _secret_env("crypt-key"),
            },
            "extraConfig": {"medhub-dataset-grants": grants_code},
            "loadRoles": {role["name"]: role for role in map(instructor_role, settings.courses)},
        },
        "proxy": {"service": {"type": "ClusterIP"}},
        "singleuser": {
            "image": _image(k8s.image),
            "uid": 1000,
            "fsGid": 100,
            "defaultUrl": "/lab",
            "storage": {"type": "dynamic", "capacity": k8s.storage_capacity,
                        "homeMountPath": settings.docker.home_mount},
            "profileList": profile_list(settings),
        },
        "cull": {
            "enabled": settings.culler.enabled,
            "timeout": settings.culler.timeout,
            "every": settings.culler.every,
            "maxAge": settings.culler.max_age,
            "users": settings.culler.cull_users,
        },
    }
