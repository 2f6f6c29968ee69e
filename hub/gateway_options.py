"""Dask Gateway cluster options for medhub users: Dask workers sized by the hub's profiles,
seeing the user's granted datasets read-only, unprivileged like the user's own server.

This file runs inside the dask-gateway server on Kubernetes (the dask-gateway Helm chart's
``gateway.extraConfig``), where medhub is not installed: it imports only the standard library
and ``dask_gateway_server``. :func:`medhub.k8s.gateway_values` embeds its source followed by
``c.Backend.cluster_options = make_options(SPEC, ...)``, SPEC being computed from the settings:

- ``profiles``: ``[{"slug", "display_name", "cpu_limit", "mem_limit", "gpus", "groups"}]``
  (``gpus`` already resolved to a count);
- ``default_profile``: a slug;
- ``datasets``: ``[{"id", "readers"}]``, the local datasets and the groups granted each;
- ``claim_prefix``: dataset ``<id>`` is the PersistentVolumeClaim ``<claim_prefix><id>``;
- ``mount_root``: where datasets appear (``/datasets``), as in the user's server;
- ``uid``, ``gid``: the unprivileged account of the notebook image.
"""

from typing import Any

from dask_gateway_server.options import Options, Select


def _security_context(spec: dict[str, Any]) -> dict[str, Any]:
    return {"runAsUser": spec["uid"], "runAsGroup": spec["gid"], "runAsNonRoot": True,
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def cluster_config(spec: dict[str, Any], slug: str, groups: set[str],
                   environment: dict[str, str] | None = None) -> dict[str, Any]:
    """``KubeClusterConfig`` values for a member of ``groups`` asking for profile ``slug``;
    ``environment`` is the one configured for every cluster, which these values extend.

    Raises:
        ValueError: the profile is not offered to these groups (the user sees the message).
    """
    profile = next(p for p in spec["profiles"] if p["slug"] == slug)
    if profile["groups"] and not groups.intersection(profile["groups"]):
        raise ValueError(f"worker profile '{slug}' is for members of {', '.join(profile['groups'])}; "
                         "pick another with cluster options (gateway.cluster_options())")
    granted = [d["id"] for d in spec["datasets"] if groups.intersection(d["readers"])]
    volumes = [{"name": f"dataset-{i}", "persistentVolumeClaim": {"claimName": spec["claim_prefix"] + i,
                                                                    "readOnly": True}} for i in granted]
    mounts = [{"name": f"dataset-{i}", "mountPath": f"{spec['mount_root']}/{i}", "readOnly": True} for i in granted]
    worker: dict[str, Any] = {"securityContext": _security_context(spec), "volumeMounts": mounts}
    if profile["gpus"]:
        gpus = str(profile["gpus"])
        worker["resources"] = {"requests": {"nvidia.com/gpu": gpus}, "limits": {"nvidia.com/gpu": gpus}}
    config: dict[str, Any] = {
        "worker_extra_container_config": worker,
        "worker_extra_pod_config": {"volumes": volumes},
        "scheduler_extra_container_config": {"securityContext": _security_context(spec)},
        "environment": {**(environment or {}), "MEDHUB_WORKER_PROFILE": slug,
                        "MEDHUB_DATASETS_DIR": spec["mount_root"]},
    }
    if profile["cpu_limit"]:
        config["worker_cores"] = config["worker_cores_limit"] = float(profile["cpu_limit"])
        config["worker_threads"] = max(1, int(profile["cpu_limit"]))
    if profile["mem_limit"]:
        config["worker_memory"] = config["worker_memory_limit"] = profile["mem_limit"]
    return config


def make_options(spec: dict[str, Any], environment: dict[str, str] | None = None) -> Options:
    """The options users choose from (``gateway.cluster_options()``): the worker profile.
    ``environment``: the chart's ``gateway.backend.environment``, kept for every cluster."""
    return Options(
        Select("profile", [p["slug"] for p in spec["profiles"]], default=spec["default_profile"],
               label="Worker size (the hub's profiles)"),
        handler=lambda options, user: cluster_config(spec, options.profile, set(user.groups), environment),
    )
