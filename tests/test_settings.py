"""The settings file: defaults, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w

from medhub.errors import HubConfigError
from medhub.settings import DEFAULT_PROFILES, load

MINIMAL = {
    "oidc": {
        "issuer": "https://login.example.org/realms/research",
        "client_id": "medhub",
        "client_secret": "s3cret",
        "allowed_groups": ["radiology-research"],
    }
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "medhub.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def with_(section: str, **values) -> dict:
    data = {k: dict(v) for k, v in MINIMAL.items()}
    data.setdefault(section, {}).update(values)
    return data


def test_minimal_settings_take_safe_defaults(tmp_path: Path):
    s = load(write(tmp_path, MINIMAL))
    assert s.hub.spawner == "local"
    assert s.hub.cleanup_servers is False  # servers survive hub restarts
    assert s.hub.state_dir == (tmp_path / "state").resolve()
    assert s.oidc.scopes == ("openid", "profile", "email", "groups")
    assert s.profiles == DEFAULT_PROFILES
    assert s.default_profile.slug == "cpu" and s.default_profile.gpus == 0
    assert s.callback_url == "http://127.0.0.1:8000/hub/oauth_callback"
    assert s.culler.enabled and s.culler.timeout == 3600


def test_client_secret_from_file_and_environment(tmp_path: Path, monkeypatch):
    (tmp_path / "secret").write_text("from-file\n")
    data = with_("oidc", client_secret_file="secret")
    del data["oidc"]["client_secret"]
    assert load(write(tmp_path, data)).oidc.client_secret == "from-file"
    del data["oidc"]["client_secret_file"]
    monkeypatch.setenv("MEDHUB_OIDC_CLIENT_SECRET", "from-env")
    assert load(write(tmp_path, data)).oidc.client_secret == "from-env"
    monkeypatch.delenv("MEDHUB_OIDC_CLIENT_SECRET")
    with pytest.raises(HubConfigError, match="oidc.client_secret_file: no client secret"):
        load(write(tmp_path, data))


@pytest.mark.parametrize(
    "data, message",
    [
        (with_("oidc", issuer="http://login.example.org"), "oidc.issuer: .*plain http on a non-loopback host"),
        (with_("oidc", issuer="login.example.org"), "oidc.issuer: must be an http"),
        (with_("oidc", client_id=""), "oidc.client_id: must not be empty"),
        (with_("oidc", scopes=["profile"]), "oidc.scopes: must include 'openid'"),
        (with_("oidc", allowed_groups=[]), "oidc.allowed_groups: name at least one group"),
        (with_("oidc", allowed_groups="radiology"), "oidc.allowed_groups: must be list"),
        (with_("oidc", client_secret_file="/nonexistent/secret"), "oidc.client_secret: set either"),
        (with_("hub", spawner="kubernetes"), "hub.spawner: must be 'local' or 'docker'"),
        (with_("hub", hub_port=70000), "hub.hub_port: must be a TCP port"),
        (with_("hub", cleanup_servers="yes"), "hub.cleanup_servers: must be bool"),
        (with_("hub", colour="blue"), r"\[hub\] has unknown setting\(s\) colour"),
        (with_("culler", timeout="1h"), "culler.timeout: must be int"),
        (with_("docker", imgae="medhub/notebook"), r"\[docker\] has unknown setting\(s\) imgae"),
        ({**MINIMAL, "extras": {}}, "unknown section"),
        ({"hub": {}}, r"the \[oidc\] section is required"),
        ({**MINIMAL, "profiles": [{"slug": "GPU!", "display_name": "x"}]}, r"profiles\[0\].slug: 'GPU!' is not a slug"),
        ({**MINIMAL, "profiles": [{"slug": "a", "display_name": "x", "gpus": "many"}]}, r"profiles\[0\].gpus"),
        ({**MINIMAL, "profiles": [{"slug": "a", "display_name": "x", "mem_limit": "lots"}]}, r"profiles\[0\].mem_limit"),
        ({**MINIMAL, "profiles": [{"slug": "a", "display_name": "x"}, {"slug": "a", "display_name": "y"}]},
         "slugs must be unique"),
        ({**MINIMAL, "datasets": [{"id": "ct"}]}, "unknown section"),  # the catalog is a file of its own
        (with_("hub", catalog="/nonexistent/datasets.toml"), "hub.catalog: /nonexistent/datasets.toml is not a file"),
        ({**with_("hub", spawner="docker", public_url="https://hub.example.org"), "docker": {"network": "host"}},
         "docker.network: 'host' puts every user's kernels, Dask schedulers .* docker.shared_host_network = true"),
        (with_("hub", spawner="docker"), "docker.network: users' containers on 'medhub-users' cannot reach "
                                         "hub.public_url .* gateway address 172.29.0.1"),
        (with_("docker", subnet="172.29.0.0/30"), "docker.subnet: 172.29.0.0/30 is too small"),
        (with_("docker", subnet="nets"), "docker.subnet: 'nets' is not a network"),
        (with_("docker", pids_limit=10), "docker.pids_limit: must be 64 or more"),
        (with_("audit", anchor_dir="state/anchor"), "audit.anchor_dir: .* lies inside hub.state_dir"),
        (with_("federated", enabled=True), "federated.admin_kit: must be set when enabled = true"),
        (with_("federated", enabled=True, admin_kit="/tmp", admin="a@b", models_dataset="m"),
         "federated.admin_kit: /tmp is no admin startup kit"),
    ],
)
def test_errors_name_the_setting(tmp_path: Path, data: dict, message: str):
    with pytest.raises(HubConfigError, match=message):
        load(write(tmp_path, data))


def test_unreadable_or_invalid_files(tmp_path: Path):
    with pytest.raises(HubConfigError, match="cannot read settings file"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[oidc\nissuer = ")
    with pytest.raises(HubConfigError, match="is not valid TOML"):
        load(bad)


def test_profiles_accept_all_gpus(tmp_path: Path):
    data = {**MINIMAL, "profiles": [{"slug": "big", "display_name": "Big", "gpus": "all", "cpu_limit": 4}]}
    (p,) = load(write(tmp_path, data)).profiles
    assert p.gpus == -1 and p.cpu_limit == 4.0


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def test_tls_settings_are_checked_and_plain_http_off_loopback_needs_saying_so(tmp_path: Path):
    cert, key = self_signed(tmp_path)
    with pytest.raises(HubConfigError, match="hub.tls_key.*give both"):
        load(write(tmp_path, with_("hub", public_url="https://hub.example.org", tls_cert=str(cert))))
    with pytest.raises(HubConfigError, match="must be https:// when tls_cert"):
        load(write(tmp_path, with_("hub", public_url="http://127.0.0.1:8000", tls_cert=str(cert), tls_key=str(key))))
    with pytest.raises(HubConfigError, match="plain http on a non-loopback host"):
        load(write(tmp_path, with_("hub", public_url="http://hub.example.org")))
    insecure = load(write(tmp_path, with_("hub", public_url="http://hub.example.org", insecure_http=True)))
    assert insecure.hub.public_url == "http://hub.example.org" and insecure.hub.insecure_http


def test_the_proxy_serves_tls_with_the_configured_certificate(tmp_path: Path):
    import httpx

    from medhub.processes import Stack, free_port, proxy_process

    cert, key = self_signed(tmp_path)
    port = free_port()
    settings = load(write(tmp_path, with_("hub", public_url=f"https://127.0.0.1:{port}", tls_cert=str(cert),
                                          tls_key=str(key), proxy_api_port=free_port(), hub_port=free_port(),
                                          state_dir=str(tmp_path / "state"))))
    with Stack() as stack:
        stack.start(proxy_process(settings))
        answer = httpx.get(f"https://127.0.0.1:{port}/hub/", verify=str(cert), timeout=10)
        assert answer.status_code in (502, 503)  # TLS accepted by the proxy; no hub behind it here
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/hub/", timeout=10)  # no plain http on that port


def test_host_networking_only_where_its_risk_is_accepted(tmp_path: Path):
    data = {**with_("hub", spawner="docker", public_url="https://hub.example.org"),
            "docker": {"network": "host", "shared_host_network": True}}
    assert load(write(tmp_path, data)).users_network is False
    settings = load(write(tmp_path, with_("hub", spawner="docker", public_url="https://hub.example.org")))
    assert settings.users_network and settings.hub_url == "http://172.29.0.1:8081"  # the hub on the gateway
    assert load(write(tmp_path, MINIMAL)).hub_url == "http://127.0.0.1:8081"  # local servers: loopback


def test_the_readme_reference_is_the_models(tmp_path: Path):
    """The configuration reference in README.md is generated from the settings model: a setting
    added, renamed, re-defaulted or re-documented there fails here until the README is regenerated."""
    from medhub import settings_reference
    from medhub.cli import main as medhub_main
    from medhub.settings import Settings

    readme = Path(__file__).parents[1] / "README.md"
    assert settings_reference.replace_in(readme.read_text()) == readme.read_text(), \
        "README.md's settings reference is stale: run `medhub settings-reference --write README.md`"
    for root in settings_reference.REFERENCES.values():  # every table and every key, with its documentation
        reference = settings_reference.markdown(root)
        for name, field in root.model_fields.items():
            model = field.annotation.__args__[0] if name in ("profiles", "courses", "sites") else field.annotation
            for key, info in (model.model_fields.items() if isinstance(model, type) and hasattr(model, "model_fields")
                              else [(name, field)]):
                assert info.description, f"{root.__name__}: {key} has no docstring"
                assert f"| `{key}` |" in reference
    reference = settings_reference.markdown()
    assert "| `pids_limit` | integer | `2048` |" in reference
    assert "| `home_root` | path | *<hub.state_dir>/home* |" in reference  # a default that follows another
    copy = tmp_path / "README.md"
    copy.write_text(readme.read_text().replace("| `pids_limit` | integer | `2048` |", "| `pids_limit` | integer | `1` |"))
    assert medhub_main(["settings-reference", "--write", str(copy)]) == 0
    assert copy.read_text() == readme.read_text()
    (tmp_path / "plain.md").write_text("no markers\n")
    assert medhub_main(["settings-reference", "--write", str(tmp_path / "plain.md")]) == 2
