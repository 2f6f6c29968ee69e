"""Dask Gateway beside the hub, for real: the cluster options that ``medhub k8s-values --chart
dask-gateway`` generates run in a real dask-gateway-server that authenticates users with the
real hub's tokens, and users get clusters from their own servers' tokens.

Only the backend differs from Kubernetes: clusters here are local processes
(``UnsafeLocalBackend``), so the options' Kubernetes-only parts (pod volumes, GPU requests,
security contexts) are left out here; tests/test_k8s.py checks those on the pods the
Kubernetes controller would create. What this test shows is the part that needs the hub: the
scopes the generated values give servers' tokens and users suffice, and the gateway sees the
user's groups, so worker profiles follow the same groups as server profiles.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import pytest
from aiohttp import ClientResponseError
from dask_gateway import Gateway, GatewayClusterError, JupyterHubAuth

from conftest import Platform, start_platform, stop_platform
from medhub.k8s import GATEWAY_SERVER_TOKEN_SCOPES, GATEWAY_SERVICE, GATEWAY_USER_SCOPES, gateway_values
from medhub.processes import ManagedProcess, free_port
from test_spawn import server_environ

PROFILES = [
    {"slug": "cpu", "display_name": "CPU", "cpu_limit": 1, "mem_limit": "2G", "default": True},
    {"slug": "gpu1", "display_name": "1 GPU", "cpu_limit": 2, "mem_limit": "4G", "gpus": 1,
     "groups": ["radiology-research"]},
    {"slug": "teaching", "display_name": "Teaching", "cpu_limit": 1, "mem_limit": "2G"},  # the course's (conftest)
]

# What the generated Zero to JupyterHub values set (hub.services, JupyterHub.extra_user_scopes,
# KubeSpawner.server_token_scopes), applied to this hub's spawner.
HUB_CONFIG = """
c.JupyterHub.services.append({{"name": "{service}", "url": "http://127.0.0.1:{public}", "api_token": "{token}",
                               "display": False}})
c.JupyterHub.extra_user_scopes.update({user_scopes!r})
c.MedhubLocalSpawner.server_token_scopes.extend({token_scopes!r})
"""

GATEWAY_CONFIG = """
c.DaskGateway.address = "127.0.0.1:{api}"
c.Proxy.address = "127.0.0.1:{public}"
c.Proxy.tcp_address = "127.0.0.1:{tcp}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
c.JupyterHubAuthenticator.jupyterhub_api_token = "{token}"
c.JupyterHubAuthenticator.jupyterhub_api_url = "{hub_api}"
"""

# Local processes take the options' resources and environment, not pod specifications.
LOCAL_BACKEND = """
_kubernetes_handler = c.Backend.cluster_options.handler
c.Backend.cluster_options.handler = lambda options, user: {
    key: value for key, value in _kubernetes_handler(options, user).items() if "extra" not in key}
"""


@pytest.fixture(scope="module")
def gateway_platform(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gateway")
    token, api, public, tcp = secrets.token_hex(16), free_port(), free_port(), free_port()
    p = start_platform(root, sections={"profiles": PROFILES, "dask_gateway": {"enabled": True}},
                       extra_config=HUB_CONFIG.format(service=GATEWAY_SERVICE, public=public, token=token,
                                                      user_scopes=set(GATEWAY_USER_SCOPES),
                                                      token_scopes=GATEWAY_SERVER_TOKEN_SCOPES))
    try:
        generated = gateway_values(p.settings)["gateway"]["extraConfig"]["medhub-cluster-options"]
        config = root / "dask_gateway_config.py"
        config.write_text(GATEWAY_CONFIG.format(api=api, public=public, tcp=tcp, token=token,
                                                hub_api=f"http://127.0.0.1:{p.settings.hub.hub_port}/hub/api")
                          + generated + LOCAL_BACKEND)
        # the generated configuration starts clusters with `dask scheduler` / `dask worker`
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        p.stack.start(ManagedProcess("dask-gateway", [sys.executable, "-m", "dask_gateway_server", "-f", str(config)],
                                     root / "logs" / "dask-gateway.log", f"http://127.0.0.1:{api}/api/health",
                                     env={"PATH": path}, cwd=root))
        # the gateway's public addresses (its proxy): HTTP API, and schedulers' TLS connections
        yield p, {"address": f"http://127.0.0.1:{public}", "proxy_address": f"gateway://127.0.0.1:{tcp}"}
    finally:
        stop_platform(p)


def server_gateway(p: Platform, addresses: dict[str, str], username: str, profile: str = "cpu") -> Gateway:
    """A Gateway client as ``username``'s server makes one: with that server's own token."""
    assert p.login(p.browser(), username).status_code == 200
    assert p.api("POST", f"/users/{username}/server", json={"profile": profile}).status_code in (201, 202)
    p.wait_ready(username)
    return Gateway(**addresses, auth=JupyterHubAuth(api_token=server_environ(p, username)["JUPYTERHUB_API_TOKEN"]))


def test_a_researcher_gets_a_gpu_profile_cluster_from_their_servers_token(gateway_platform):
    p, addresses = gateway_platform
    with server_gateway(p, addresses, "alice") as gateway:  # radiology-research
        options = gateway.cluster_options()
        assert options.profile == "cpu"  # the hub's default profile
        options.profile = "gpu1"
        with gateway.new_cluster(options) as cluster:
            cluster.scale(1)
            with cluster.get_client() as client:
                client.wait_for_workers(1, timeout=120)
                env = client.submit(lambda: dict(os.environ)).result()  # the worker's environment
                info = client.scheduler_info()
            assert env["MEDHUB_WORKER_PROFILE"] == "gpu1"
            assert env["MEDHUB_DATASETS_DIR"] == "/datasets"
            (worker,) = info["workers"].values()
            assert worker["nthreads"] == 2  # the profile's two CPUs
            assert worker["memory_limit"] == 4 * 2**30
        assert [c.name for c in gateway.list_clusters()] == []


def test_a_student_is_refused_a_profile_of_another_group(gateway_platform):
    p, addresses = gateway_platform
    with server_gateway(p, addresses, "bob") as gateway:  # course-students
        with pytest.raises((GatewayClusterError, ValueError), match="worker profile 'gpu1' is for members of"):
            gateway.new_cluster(profile="gpu1")


def test_a_token_without_the_gateway_scope_is_refused(gateway_platform):
    p, addresses = gateway_platform
    p.login(p.browser(), "frank")  # a user of the hub, with a token that may not reach the gateway
    token = p.api("POST", "/users/frank/tokens", json={"scopes": ["read:users:groups!user=frank"]}).json()["token"]
    with Gateway(**addresses, auth=JupyterHubAuth(api_token=token)) as gateway:
        with pytest.raises(ClientResponseError) as refused:
            gateway.list_clusters()
    assert refused.value.status == 401
