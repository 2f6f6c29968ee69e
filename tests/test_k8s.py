"""Helm values generated from the settings, validated on the real components that read them.

No cluster runs here. Zero to JupyterHub: the profiles and the dataset hook are applied to a
KubeSpawner in its test mode, and the pod manifest it would submit is checked, and validated
against the Kubernetes API schema (kubernetes-validate, strict: unknown fields fail).
dask-gateway: the generated configuration runs in a real dask-gateway-server configuration,
and the worker pod its Kubernetes controller would create is checked and validated the same way.
"""

from __future__ import annotations

import asyncio
import inspect
import tomllib
from pathlib import Path

import kubernetes_asyncio.config.kube_config
import kubernetes_validate
import pytest
import tomli_w
import yaml
from jupyterhub import orm
from jupyterhub.user import User
from kubernetes_asyncio.client import ApiClient
from kubespawner import KubeSpawner
from traitlets.config import Config

from medhub.cli import main as medhub_main
from medhub.config import Deployment, configure
from medhub.errors import HubConfigError
from medhub.k8s import (AUDIT_ANCHOR_MOUNT, AUDIT_KEY, AUDIT_KEY_MOUNT, AUDIT_MOUNT, CHART_VERSION,
                        GATEWAY_CHART_VERSION, gateway_values, profile_list, values)
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
                       "grants_key_file": str(tmp_path / "grants.pem"), "state_dir": str(tmp_path / "pod-state")},
    }
    entry = {"sensitivity": "anonymized", "licence": "CC0-1.0", "owners": ["radiology-research"]}
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


def valid(resource: dict) -> dict:
    """``resource``, after checking it against the Kubernetes API schema (strict)."""
    try:
        kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{resource['kind']} invalid at {'.'.join(map(str, e.path))}: {e.message}") from None
    return resource


def pod_manifest(groups: list[str], prepare, config: Config | None = None):
    """The pod KubeSpawner would create for a member of ``groups`` after ``prepare(spawner)``,
    checked against the Kubernetes API schema."""

    async def build():
        spawner = kube_spawner(groups, config)  # KubeSpawner needs a running event loop
        if inspect.isawaitable(prepared := prepare(spawner)):
            await prepared
        async with ApiClient() as api:
            return api.sanitize_for_serialization(await spawner.get_pod_manifest())

    return valid(asyncio.run(build()))


CHARTS = Path(__file__).parent / "charts"
JUPYTERHUB_CHART = CHARTS / f"jupyterhub-{CHART_VERSION}"
GATEWAY_CHART = CHARTS / f"dask-gateway-{GATEWAY_CHART_VERSION}"
HUB_TRAITS = Path(__file__).with_name("hub_traits.py")


def hub_traits(*args: str, env: dict[str, str] | None = None) -> dict:
    """What ``tests/hub_traits.py`` reports of a hub configuration (run in a process of its own:
    the chart's configuration sets process-wide state)."""
    import json
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(HUB_TRAITS), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def pod_traits(settings_file: Path, tmp_path: Path) -> dict:
    """The traits the chart's own hub configuration sets with the values made of ``settings_file``."""
    out = tmp_path / "values.yaml"
    assert medhub_main(["k8s-values", "--settings", str(settings_file), "-o", str(out)]) == 0
    return hub_traits("chart", str(JUPYTERHUB_CHART), str(out), str(tmp_path / "pod"),
                      env={"MEDHUB_TEST_SECRET_OIDC_CLIENT_SECRET": "s"})


def pod_config(settings_file: Path) -> Config:
    """The configuration :func:`medhub.config.configure_pod` makes in the hub pod."""
    settings = load(settings_file)
    c = Config()
    configure(c, settings, Deployment.pod(settings))
    return c


def test_values_file_from_the_cli(settings_file: Path, tmp_path: Path):
    traits = pod_traits(settings_file, tmp_path)
    text = (tmp_path / "values.yaml").read_text()
    v = yaml.safe_load(text)
    assert traits["classes"]["Authenticator"] == "medhub.auth.OIDCAuthenticator"
    assert traits["Authenticator"]["issuer"] == "https://login.example.org"
    assert traits["Authenticator"]["client_secret"] == "s"  # from the Secret, through the environment
    assert "s" not in text.split() and "client_secret" not in text  # the secret is never written
    assert v["hub"]["extraEnv"]["MEDHUB_OIDC_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "oidc-client-secret"
    assert v["singleuser"]["image"] == {"name": "registry.example.org/medhub/notebook", "tag": "1.2"}
    assert [p["slug"] for p in profile_list(load(settings_file))] == ["cpu", "gpu1", "gpu-all", "teaching"]
    (culler,) = [s for s in traits["JupyterHub"]["services"] if s["name"] == "idle-culler"]
    assert culler["command"][-3:] == ["--timeout=3600", "--cull-every=300", "--max-age=0"]
    assert v["cull"] == {"enabled": False}  # medhub's configuration runs it, as everywhere


@pytest.mark.parametrize("slug, gpus", [("cpu", None), ("gpu1", "1"), ("gpu-all", "4")])
def test_profiles_apply_to_a_real_kubespawner(settings_file: Path, slug: str, gpus: str | None):
    profiles = profile_list(load(settings_file))
    pod = pod_manifest(["radiology-research"],
                       lambda s: s._load_profile(slug, s._get_initialized_profile_list(profiles)))
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == gpus
    assert limits["cpu"] == {"cpu": 2.0, "gpu1": 8.0, "gpu-all": 16.0}[slug]


def test_dataset_hook_mounts_only_granted_claims_read_only(settings_file: Path):
    config = pod_config(settings_file)
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


def test_the_charts_hub_runs_medhubs_configuration_with_real_traits(settings_file: Path, tmp_path: Path):
    """The chart's own jupyterhub_config.py, with the generated values, sets only traits that
    exist (in this environment's JupyterHub, OAuthenticator and KubeSpawner; the hub image's are
    checked in tests/test_containers.py)."""
    traits = pod_traits(enable_gateway(settings_file), tmp_path)
    assert traits["missing"] == []
    assert traits["classes"]["Spawner"] == "kubespawner.spawner.KubeSpawner"
    assert "extra_user_scopes" in traits["JupyterHub"]  # JupyterHub 6: the chart's own image (5.5) lacks it


def enable_gateway(settings_file: Path) -> Path:
    text = settings_file.read_text() + '\n[dask_gateway]\nenabled = true\nmax_workers = 8\n\n[[profiles]]\n' \
        'slug = "cpu"\ndisplay_name = "CPU"\ncpu_limit = 2\nmem_limit = "8G"\ndefault = true\n\n[[profiles]]\n' \
        'slug = "gpu1"\ndisplay_name = "1 GPU"\ncpu_limit = 8\nmem_limit = "32G"\ngpus = 1\n' \
        'groups = ["radiology-research"]\n'
    settings_file.write_text(text)
    return settings_file


def gateway_worker_pod(settings_file: Path, profile: str, groups: list[str]) -> dict:
    """The worker pod dask-gateway's Kubernetes controller would create for a member of
    ``groups`` asking for ``profile``, from the generated chart values."""
    from dask_gateway_server.backends.kubernetes.backend import KubeClusterConfig
    from dask_gateway_server.backends.kubernetes.controller import KubeController
    from dask_gateway_server.models import User

    gateway = gateway_values(load(settings_file))["gateway"]
    c = Config()
    c.KubeClusterConfig.environment = {"HOSPITAL_PROXY": "http://proxy:3128"}  # the chart's backend.environment
    exec(gateway["extraConfig"]["medhub-cluster-options"], {"c": c})  # as the chart's config file does
    options = c.Backend.cluster_options
    overrides = options.get_configuration({"profile": profile}, User("alice", groups))
    config = KubeClusterConfig(config=c, image="registry.example.org/medhub/notebook:1.2", **overrides)
    controller = KubeController(api_url="http://api-dask-gateway:8000/api", gateway_instance="medhub")
    return valid(controller.make_pod("medhub", "c0ffee", config, is_worker=True))


def test_dask_gateway_workers_get_the_profile_and_only_the_granted_datasets(settings_file: Path):
    pod = gateway_worker_pod(enable_gateway(settings_file), "gpu1", ["radiology-research"])
    (worker,) = pod["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["resources"]["limits"]["cpu"] == "8.000"
    assert worker["resources"]["limits"]["memory"] == str(32 * 2**30)
    assert worker["args"][:2] == ["dask", "worker"]
    claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"dataset-research-ct": {"claimName": "medhub-dataset-research-ct", "readOnly": True}}
    mounts = {m["mountPath"]: m.get("readOnly") for m in worker["volumeMounts"]}
    assert mounts["/datasets/research-ct"] is True and "/datasets/teaching-ct" not in mounts
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["MEDHUB_WORKER_PROFILE"] == "gpu1" and env["HOSPITAL_PROXY"] == "http://proxy:3128"
    security = worker["securityContext"]
    assert security["runAsUser"] == 1000 and security["runAsNonRoot"] and not security["allowPrivilegeEscalation"]

    student = gateway_worker_pod(settings_file, "cpu", ["course-students"])
    (worker,) = student["spec"]["containers"]
    assert "nvidia.com/gpu" not in worker["resources"]["limits"]
    assert [m["mountPath"] for m in worker["volumeMounts"] if m["mountPath"].startswith("/datasets")] == \
        ["/datasets/teaching-ct"]


def test_dask_gateway_refuses_a_profile_outside_the_users_groups(settings_file: Path):
    with pytest.raises(ValueError, match="worker profile 'gpu1' is for members of radiology-research"):
        gateway_worker_pod(enable_gateway(settings_file), "gpu1", ["course-students"])


def test_dask_gateway_is_registered_with_the_hub_and_in_users_environment(settings_file: Path, tmp_path: Path):
    assert "services" not in values(load(settings_file))["hub"]
    with pytest.raises(HubConfigError, match=r"\[dask_gateway\] enabled is false"):
        gateway_values(load(settings_file))
    v = values(load(enable_gateway(settings_file)))
    assert v["hub"]["services"] == {"dask-gateway": {"display": False, "url": "http://traefik-dask-gateway"}}
    config = pod_config(settings_file)
    assert "access:services!service=dask-gateway" in config.JupyterHub.extra_user_scopes
    assert "access:services!service=dask-gateway" in config.KubeSpawner.server_token_scopes
    assert config.KubeSpawner.environment["DASK_GATEWAY__AUTH__TYPE"] == "jupyterhub"
    out = tmp_path / "gateway.yaml"
    assert medhub_main(["k8s-values", "--settings", str(settings_file), "--chart", "dask-gateway", "-o", str(out)]) == 0
    g = yaml.safe_load(out.read_text())
    assert g["gateway"]["auth"] == {"type": "jupyterhub"}
    assert g["gateway"]["prefix"] == "/services/dask-gateway"
    assert g["gateway"]["backend"]["image"] == {"name": "registry.example.org/medhub/notebook", "tag": "1.2"}
    assert "c.ClusterConfig.cluster_max_workers = 8" in g["gateway"]["extraConfig"]["medhub-cluster-options"]


class FakeCluster:
    """The two calls of the Kubernetes API the GPU inventory makes, answered from ``gpus`` (node →
    allocatable nvidia.com/gpu) and ``held`` (node → GPUs its pods ask for), as the API's models;
    or refused with ``status`` (no RBAC)."""

    def __init__(self, gpus: dict[str, int], held: dict[str, int] | None = None, status: int | None = None):
        self.gpus, self.held, self.status = gpus, held or {}, status

    def _refuse(self) -> None:
        from kubernetes_asyncio.client.rest import ApiException

        if self.status:
            raise ApiException(status=self.status, reason="Forbidden")

    async def list_node(self):
        from kubernetes_asyncio.client import V1Node, V1NodeList, V1NodeStatus, V1ObjectMeta

        self._refuse()
        return V1NodeList(items=[V1Node(metadata=V1ObjectMeta(name=name), status=V1NodeStatus(
            allocatable={"cpu": "16", **({"nvidia.com/gpu": str(n)} if n else {})})) for name, n in self.gpus.items()])

    async def list_pod_for_all_namespaces(self, field_selector: str = ""):
        from kubernetes_asyncio.client import (V1Container, V1Pod, V1PodList, V1PodSpec,
                                               V1ResourceRequirements)

        self._refuse()
        assert field_selector == "status.phase!=Succeeded,status.phase!=Failed"
        return V1PodList(items=[V1Pod(spec=V1PodSpec(node_name=node, containers=[V1Container(
            name="c", resources=V1ResourceRequirements(requests={"nvidia.com/gpu": str(n)}))]))
            for node, n in self.held.items()])


def test_gpu_profiles_are_marked_unavailable_and_refused_when_no_node_has_the_gpus_free(settings_file: Path):
    from tornado import web

    config = pod_config(enable_gateway(settings_file))  # gpu1 is for radiology-research only

    async def offer(cluster: FakeCluster, slug: str = "gpu1"):
        spawner = kube_spawner(["radiology-research"], config)
        spawner.api = cluster
        shown = {p["slug"]: p["description"] for p in await spawner.profile_list(spawner)}
        spawner.user_options = {"profile": slug}
        try:
            await spawner.pre_spawn_hook(spawner)
        except web.HTTPError as e:
            return shown[slug], e.jupyterhub_message, spawner.start_error
        return shown[slug], None, getattr(spawner, "start_error", None)

    busy = FakeCluster({"node-a": 2, "node-b": 0}, held={"node-a": 2})
    shown, refused, reason = asyncio.run(offer(busy))
    assert shown.endswith("(unavailable: no node has 1 GPU free now)")
    assert refused == ("The profile '1 GPU' needs 1 GPU and no node has 1 GPU free now. Choose a profile without "
                       "GPUs, or try again later.")
    assert reason == "profile 'gpu1' needs GPUs: no node has 1 GPU free now"
    shown, refused, _ = asyncio.run(offer(FakeCluster({"node-a": 0})))
    assert shown.endswith("(unavailable: no node of the cluster has a GPU)") and refused
    shown, refused, _ = asyncio.run(offer(FakeCluster({"node-a": 2}, held={"node-a": 1})))
    assert "unavailable" not in shown and refused is None  # one of node-a's two is free
    assert asyncio.run(offer(busy, "cpu"))[1] is None  # a CPU profile asks the cluster nothing
    # without the ClusterRole the hub cannot see the GPUs: it offers them unmarked (and says so in its log)
    shown, refused, _ = asyncio.run(offer(FakeCluster({}, status=403)))
    assert "unavailable" not in shown and refused is None


@pytest.mark.parametrize("groups, allowed", [(["radiology-research"], True), (["course-students"], False)])
def test_profiles_of_some_groups_are_offered_only_to_them(settings_file: Path, groups: list[str], allowed: bool):
    config = pod_config(enable_gateway(settings_file))  # gpu1 is for radiology-research only

    async def choose(slug: str):
        spawner = kube_spawner(groups, config)
        spawner.api = FakeCluster({"node-a": 1})
        offered = [p["slug"] for p in await spawner.profile_list(spawner)]
        spawner.user_options = {"profile": slug}
        await spawner.load_user_options()
        return offered, spawner.extra_resource_limits

    if allowed:
        assert asyncio.run(choose("gpu1")) == (["cpu", "gpu1"], {"nvidia.com/gpu": "1"})
    else:
        with pytest.raises(ValueError, match="gpu1"):
            asyncio.run(choose("gpu1"))
        assert asyncio.run(choose("cpu"))[0] == ["cpu"]


EXAMPLES = Path(__file__).parents[1] / "images" / "k8s"


@pytest.mark.parametrize("chart, file", [("jupyterhub", "values.yaml"), ("dask-gateway", "dask-gateway.yaml")])
def test_the_example_values_in_images_k8s_are_current(chart: str, file: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MEDHUB_OIDC_CLIENT_SECRET", "in-the-cluster-it-comes-from-the-secret")
    out = tmp_path / file
    assert medhub_main(["k8s-values", "-s", str(EXAMPLES / "medhub.toml"), "--chart", chart, "-o", str(out)]) == 0
    assert out.read_text() == (EXAMPLES / file).read_text(), \
        f"images/k8s/{file} is stale: regenerate it (the command is in images/k8s/medhub.toml)"


def test_the_example_dataset_volume_and_claim_are_valid_kubernetes():
    resources = list(yaml.safe_load_all((EXAMPLES / "dataset-pvc.yaml").read_text()))
    assert [r["kind"] for r in map(valid, resources)] == ["PersistentVolume", "PersistentVolumeClaim"]
    volume, claim = resources
    assert claim["metadata"]["name"] == "medhub-dataset-research-ct"  # what the hub's hook mounts
    assert volume["spec"]["accessModes"] == claim["spec"]["accessModes"] == ["ReadOnlyMany"]


def test_users_pods_are_fenced_by_a_network_policy(settings_file: Path):
    """The Docker network's rules on Kubernetes (issue 15): reached only by the hub and the proxy,
    reaching only the hub, the proxy's public port and DNS."""
    policy = values(load(settings_file))["singleuser"]["networkPolicy"]
    assert policy["enabled"] and policy["ingress"] == [] and policy["allowedIngressPorts"] == []
    assert policy["interNamespaceAccessLabels"] == "ignore"
    rules = policy["egressAllowRules"]
    assert not (rules["privateIPs"] or rules["nonPrivateIPs"] or rules["cloudMetadataServer"])
    assert [rule["ports"] for rule in policy["egress"]] == [[{"port": 8000, "protocol": "TCP"}]]  # the proxy only
    valid({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "singleuser"},
           "spec": {"podSelector": {"matchLabels": {"component": "singleuser-server"}}, "policyTypes": ["Egress"],
                    "egress": policy["egress"]}})
    gateway = values(load(enable_gateway(settings_file)))["singleuser"]["networkPolicy"]["egress"]
    assert gateway[1]["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "traefik"


#: Traits that differ by deployment, by design (medhub.config.Deployment and the chart): where the
#: hub's process listens and keeps its database and secrets (the chart decides them on Kubernetes).
CHART_DECIDES = {"bind_url", "hub_bind_url", "hub_connect_url", "db_url", "cookie_secret", "cookie_secret_file",
                 "pid_file", "cleanup_proxy", "spawner_class", "admin_access", "base_url", "concurrent_spawn_limit",
                 "last_activity_interval", "template_paths", "template_vars", "authenticate_prometheus",
                 "redirect_to_server", "shutdown_on_logout", "active_server_limit", "cleanup_servers"}


def comparable_services(services: list[dict]) -> dict[str, dict]:
    """Services by name, with what depends on the deployment put as the deployment says: their
    host (127.0.0.1, or the hub's Service), the hub's pid in their command line, the folders in
    their environment. The chart's own services (dask-gateway) are left out."""
    out = {}
    for s in services:
        if s["name"] == "dask-gateway":
            continue
        s = dict(s)
        if "url" in s:
            s["url"] = s["url"].replace("127.0.0.1", "HOST").replace("//hub:", "//HOST:")
        if "command" in s:
            s["command"] = [part for i, part in enumerate(s["command"][1:]) if i != 2]  # python, -m, medhub.child, PID
        if "environment" in s:
            s["environment"] = sorted(set(s["environment"]) - {"MEDHUB_SERVICE_BIND"})
        s.pop("api_token", None)
        out[s["name"]] = s
    return out


def test_the_hub_is_configured_alike_by_medhub_run_and_by_the_chart(settings_file: Path, tmp_path: Path):
    """One function, two deployments: medhub's jupyterhub_config.py (medhub run, up, demo) and
    the chart's own, with the values medhub makes, give the hub the same authenticator, roles,
    scopes, services and spawner hooks from the same settings file."""
    enable_gateway(settings_file)
    run = hub_traits("medhub", env={"MEDHUB_SETTINGS": str(settings_file)})
    pod = pod_traits(settings_file, tmp_path)
    assert run["missing"] == pod["missing"] == []

    assert run["classes"]["Authenticator"] == pod["classes"]["Authenticator"] == "medhub.auth.OIDCAuthenticator"
    assert run["Authenticator"] == pod["Authenticator"]  # PKCE and server-certificate checks included
    assert pod["Authenticator"]["enable_pkce"] and pod["Authenticator"]["validate_server_cert"]

    hub_run, hub_pod = run["JupyterHub"], pod["JupyterHub"]
    differ = {name for name in (set(hub_run) | set(hub_pod)) - CHART_DECIDES if hub_run.get(name) != hub_pod.get(name)}
    assert differ == {"services", "extra_user_scopes", "tornado_settings"}
    assert set(hub_pod["extra_user_scopes"]) - set(hub_run["extra_user_scopes"]) == {
        "access:services!service=dask-gateway"}  # the gateway runs only on Kubernetes
    assert comparable_services(hub_run["services"]) == comparable_services(hub_pod["services"])
    assert set(comparable_services(hub_pod["services"])) == {"medhub-audit", "medhub-audit-hub", "medhub-batch",
                                                             "medhub-ingest", "medhub-access", "idle-culler"}
    assert hub_run["tornado_settings"]["log_function"] == hub_pod["tornado_settings"]["log_function"]

    spawner_run, spawner_pod = run["Spawner"], pod["Spawner"]
    for name in ("default_url", "start_timeout", "http_timeout", "post_stop_hook"):
        assert spawner_run[name] == spawner_pod[name], name
    assert set(spawner_pod["server_token_scopes"]) - set(spawner_run["server_token_scopes"]) == {
        "access:services!service=dask-gateway"}
    assert spawner_pod["pre_spawn_hook"].endswith("+spawned")  # the dataset claims, then the audit event
    assert "pre_spawn_hook" not in spawner_run  # medhub's own spawners record the spawn once it has started
    assert set(spawner_run["environment"]) < set(spawner_pod["environment"])


def schema_errors(chart: Path, generated: dict) -> list[str]:
    """Errors of ``generated`` merged with the chart's defaults, against the chart's values schema."""
    import jsonschema

    from hub_traits import merge

    merged = merge(yaml.safe_load((chart / "values.yaml").read_text()), generated)
    schema = yaml.safe_load((chart / "values.schema.yaml").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(merged)]


def test_the_values_fit_the_charts_own_schema(settings_file: Path):
    settings = load(enable_gateway(settings_file))
    assert schema_errors(JUPYTERHUB_CHART, values(settings)) == []
    assert schema_errors(GATEWAY_CHART, gateway_values(settings)) == []
    wrong = values(settings)
    wrong["hub"]["extraVolumes"] = {"not": "a list"}
    assert schema_errors(JUPYTERHUB_CHART, wrong)  # the check can fail


def test_the_hub_services_run_in_the_hub_pod_reached_only_through_the_proxy(settings_file: Path,
                                                                                  tmp_path: Path):
    settings = load(settings_file)
    hub = values(settings)["hub"]
    volumes = {v["name"]: v for v in hub["extraVolumes"]}
    assert volumes["medhub-audit"]["persistentVolumeClaim"] == {"claimName": "medhub-audit"}
    assert volumes["medhub-audit-anchor"]["persistentVolumeClaim"] == {"claimName": "medhub-audit-anchor"}
    assert volumes["medhub-audit-key"]["secret"]["secretName"] == "medhub-secrets"
    assert volumes["medhub-audit-key"]["secret"]["items"] == [{"key": AUDIT_KEY, "path": AUDIT_KEY}]
    mounts = {m["mountPath"]: m for m in hub["extraVolumeMounts"]}
    assert set(mounts) == {AUDIT_MOUNT, AUDIT_ANCHOR_MOUNT, AUDIT_KEY_MOUNT} and mounts[AUDIT_KEY_MOUNT]["readOnly"]
    valid({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hub"},
           "spec": {"containers": [{"name": "hub", "image": "medhub/hub", "volumeMounts": hub["extraVolumeMounts"]}],
                    "volumes": hub["extraVolumes"]}})
    assert [p["port"] for p in hub["service"]["extraPorts"]] == [8082, 8092, 8093, 8095]
    (rule,) = hub["networkPolicy"]["ingress"]  # to those ports, from the proxy (and the hub) only
    assert [p["port"] for p in rule["ports"]] == [8082, 8092, 8093, 8095]
    assert [f["podSelector"]["matchLabels"]["component"] for f in rule["from"]] == ["proxy", "hub"]
    valid({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "hub"},
           "spec": {"podSelector": {"matchLabels": {"component": "hub"}}, "policyTypes": ["Ingress"],
                    "ingress": hub["networkPolicy"]["ingress"]}})
    # users' pods reach no port of the hub pod but the chart's API port: only the proxy, whose routes
    # to the services the hub sets up
    user_egress = values(settings)["singleuser"]["networkPolicy"]["egress"]
    assert all(rule["to"][0]["podSelector"]["matchLabels"]["component"] == "proxy" for rule in user_egress)

    services = {s["name"]: s for s in pod_traits(settings_file, tmp_path)["JupyterHub"]["services"]}
    audit, batch, ingest = services["medhub-audit"], services["medhub-batch"], services["medhub-ingest"]
    access = services["medhub-access"]
    assert audit["url"] == "http://hub:8082" and batch["url"] == "http://hub:8092" and ingest["url"] == "http://hub:8093"
    assert access["url"] == "http://hub:8095"
    assert {s["environment"]["MEDHUB_SERVICE_BIND"] for s in (audit, batch, ingest, access)} == {"0.0.0.0"}
    ports = {p["name"]: p["port"] for p in values(settings)["hub"]["service"]["extraPorts"]}
    assert ports == {"medhub-audit": 8082, "medhub-batch": 8092, "medhub-ingest": 8093, "medhub-access": 8095}
    assert audit["environment"]["MEDHUB_AUDIT_DIR"] == AUDIT_MOUNT
    assert audit["environment"]["MEDHUB_AUDIT_ANCHOR"] == AUDIT_ANCHOR_MOUNT
    assert audit["environment"]["MEDHUB_AUDIT_KEY_FILE"] == f"{AUDIT_KEY_MOUNT}/{AUDIT_KEY}"


def test_the_install_steps_pin_the_charts_checked_here():
    readme = (EXAMPLES / "README.md").read_text()
    assert f"--version {CHART_VERSION}" in readme and f"--version {GATEWAY_CHART_VERSION}" in readme
    assert "audit-hmac-key" in readme and "audit-pvc.yaml" in readme
    assert "not yet on kubernetes" not in readme.lower()
    for chart in (JUPYTERHUB_CHART, GATEWAY_CHART):
        assert (chart / "values.schema.yaml").is_file() and (chart / "LICENSE").is_file()


def test_the_example_audit_claims_are_valid_kubernetes():
    resources = [valid(r) for r in yaml.safe_load_all((EXAMPLES / "audit-pvc.yaml").read_text())]
    assert sorted(r["metadata"]["name"] for r in resources) == ["medhub-audit", "medhub-audit-anchor"]
    assert all(r["kind"] == "PersistentVolumeClaim" and r["spec"]["accessModes"] == ["ReadWriteOnce"]
               for r in resources)


def test_the_gpu_inventory_role_is_valid_kubernetes_and_reads_only_what_the_inventory_lists():
    from medhub.k8s import GPU_INVENTORY_RBAC

    role, binding = [valid(r) for r in yaml.safe_load_all((EXAMPLES.parents[1] / GPU_INVENTORY_RBAC).read_text())]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["list"]}]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hub", "namespace": "medhub"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_the_ingest_service_writes_versions_into_the_delivered_datasets_claims(settings_file: Path, tmp_path: Path):
    """A versioned dataset's claim is mounted writable in the hub pod, at the location the ingest
    service publishes to; its servers still mount it read-only; each site is a hub service."""
    delivered = tmp_path / "delivered"
    delivered.mkdir()
    catalog = tmp_path / "datasets.toml"
    entries = tomllib.loads(catalog.read_text())
    entries["dataset"].append({"id": "harvest-ct", "title": "H", "location": str(delivered), "versioned": True,
                               "groups": ["radiology-research"], "owners": ["radiology-research"],
                               "sensitivity": "anonymized", "licence": "CC0-1.0"})
    catalog.write_text(tomli_w.dumps(entries))
    data = tomllib.loads(settings_file.read_text())
    data["site"] = [{"name": "site-a", "datasets": ["harvest-ct"]}]
    settings_file.write_text(tomli_w.dumps(data))
    settings = load(settings_file)
    hub = values(settings)["hub"]
    (volume,) = [v for v in hub["extraVolumes"] if v["name"] == "dataset-harvest-ct"]
    assert volume["persistentVolumeClaim"] == {"claimName": "medhub-dataset-harvest-ct"}
    (mount,) = [m for m in hub["extraVolumeMounts"] if m["name"] == "dataset-harvest-ct"]
    assert mount["mountPath"] == str(delivered) and not mount.get("readOnly")
    valid({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hub"},
           "spec": {"containers": [{"name": "hub", "image": "medhub/hub", "volumeMounts": hub["extraVolumeMounts"]}],
                    "volumes": hub["extraVolumes"]}})
    services = {s["name"] for s in pod_traits(settings_file, tmp_path)["JupyterHub"]["services"]}
    assert {"medhub-ingest", "edge-site-a"} <= services
