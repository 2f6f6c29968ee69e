"""Zero to JupyterHub values generated from the settings, validated on a real KubeSpawner.

No cluster runs here: the profiles and the dataset hook are applied to a KubeSpawner in
its test mode, and the pod manifest it would submit is checked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import kubernetes_asyncio.config.kube_config
import pytest
import tomli_w
import yaml
from jupyterhub import orm
from jupyterhub.user import User
from kubernetes_asyncio.client import ApiClient
from kubespawner import KubeSpawner
from traitlets.config import Config

from medhub.cli import main as medhub_main
from medhub.errors import HubConfigError
from medhub.k8s import values
from medhub.settings import load
from medlib.datasets.grants import read_grants
from medlib.manifest import write_manifest


KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: none, user: {token: unused}}]
contexts: [{name: none, context: {cluster: none, user: none, namespace: medhub}}]
current-context: none
"""


@pytest.fixture(autouse=True)
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client configuration naming no reachable cluster: KubeSpawner needs one to exist."""
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    monkeypatch.setattr(kubernetes_asyncio.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    for name in ("research", "teaching"):
        (tmp_path / name).mkdir()
        write_manifest(tmp_path / name)
    data = {
        "oidc": {"issuer": "https://login.example.org", "client_id": "medhub", "client_secret": "s",
                 "allowed_groups": ["radiology-research", "course-students"], "admin_groups": ["admins"]},
        "kubernetes": {"gpus_per_node": 4, "image": "registry.example.org/medhub/notebook:1.2",
                       "grants_key_file": str(tmp_path / "grants.pem")},
    }
    entry = {"sensitivity": "anonymized", "licence": "CC0-1.0"}
    (tmp_path / "datasets.toml").write_text(tomli_w.dumps({"dataset": [
        {"id": "research-ct", "title": "R", "location": str(tmp_path / "research"), "groups": ["radiology-research"],
         **entry},
        {"id": "teaching-ct", "title": "T", "location": str(tmp_path / "teaching"), "groups": ["course-students"],
         **entry},
    ]}))
    data["hub"] = {"catalog": str(tmp_path / "datasets.toml")}
    path = tmp_path / "medhub.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def kube_spawner(groups: list[str], config: Config | None = None) -> KubeSpawner:
    db = orm.new_session_factory("sqlite://")()
    user = orm.User(name="alice")
    for name in groups:
        group = orm.Group(name=name)
        db.add(group)
        user.groups.append(group)
    db.add(user)
    db.commit()
    return KubeSpawner(_mock=True, user=User(user, {}), config=config or Config())


def pod_manifest(groups: list[str], prepare, config: Config | None = None):
    """The pod KubeSpawner would create for a member of ``groups`` after ``prepare(spawner)``."""

    async def build():
        spawner = kube_spawner(groups, config)  # KubeSpawner needs a running event loop
        prepare(spawner)
        async with ApiClient() as api:
            return api.sanitize_for_serialization(await spawner.get_pod_manifest())

    return asyncio.run(build())


def test_values_file_from_the_cli(settings_file: Path, tmp_path: Path):
    out = tmp_path / "values.yaml"
    assert medhub_main(["k8s-values", "--settings", str(settings_file), "-o", str(out)]) == 0
    v = yaml.safe_load(out.read_text())
    assert v["hub"]["config"]["JupyterHub"]["authenticator_class"] == "medhub.auth.OIDCAuthenticator"
    assert v["hub"]["config"]["OIDCAuthenticator"]["issuer"] == "https://login.example.org"
    assert "client_secret" not in v["hub"]["config"]["OIDCAuthenticator"]
    assert "s" not in out.read_text().split()  # the secret is never written
    assert v["hub"]["extraEnv"]["MEDHUB_OIDC_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "oidc-client-secret"
    assert v["singleuser"]["image"] == {"name": "registry.example.org/medhub/notebook", "tag": "1.2"}
    assert [p["slug"] for p in v["singleuser"]["profileList"]] == ["cpu", "gpu1", "gpu-all", "teaching"]
    assert v["cull"] == {"enabled": True, "timeout": 3600, "every": 300, "maxAge": 0, "users": False}


@pytest.mark.parametrize("slug, gpus", [("cpu", None), ("gpu1", "1"), ("gpu-all", "4")])
def test_profiles_apply_to_a_real_kubespawner(settings_file: Path, slug: str, gpus: str | None):
    profile_list = values(load(settings_file))["singleuser"]["profileList"]
    pod = pod_manifest(["radiology-research"],
                       lambda s: s._load_profile(slug, s._get_initialized_profile_list(profile_list)))
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == gpus
    assert limits["cpu"] == {"cpu": 2.0, "gpu1": 8.0, "gpu-all": 16.0}[slug]


def test_dataset_hook_mounts_only_granted_claims_read_only(settings_file: Path):
    config = Config()
    exec(values(load(settings_file))["hub"]["extraConfig"]["medhub-dataset-grants"], {"c": config})
    pod = pod_manifest(["course-students"], lambda s: s.pre_spawn_hook(s), config)
    claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"dataset-teaching-ct": {"claimName": "medhub-dataset-teaching-ct", "readOnly": True}}
    container = pod["spec"]["containers"][0]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["dataset-teaching-ct"] == {"name": "dataset-teaching-ct", "mountPath": "/datasets/teaching-ct",
                                             "readOnly": True}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MEDHUB_GROUPS"] == "course-students"
    grants = read_grants(env["MEDHUB_GRANTS"], env["MEDHUB_GRANTS_KEY"])  # signed by the hub's key
    assert [d["id"] for d in grants["granted"]] == ["teaching-ct"]
    assert grants["granted"][0]["path"] == "/datasets/teaching-ct"


def test_all_gpus_needs_the_node_size(settings_file: Path):
    text = settings_file.read_text().replace("gpus_per_node = 4", "gpus_per_node = 0")
    settings_file.write_text(text)
    with pytest.raises(HubConfigError, match="kubernetes.gpus_per_node"):
        values(load(settings_file))
