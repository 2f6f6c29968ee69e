"""pyproject.toml's ranges admit only versions that have what medhub uses: every trait the hub's
configuration sets exists in the lowest JupyterHub, OAuthenticator and DockerSpawner the ranges
allow (from each trait's ``versionadded``)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version
from traitlets.config import Config

from medhub.config import configure
from medhub.settings import load
from test_settings import with_, write

ROOT = Path(__file__).resolve().parents[1]
ADDED = re.compile(r"versionadded::\s*([0-9.]+)")


def lowest(package: str) -> dict[str, Version]:
    """The lowest version of ``package`` each extra of pyproject.toml admits."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {}
    for extra, requirements in project["optional-dependencies"].items():
        for line in requirements:
            requirement = Requirement(line)
            if requirement.name == package:
                bounds = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
                assert bounds, f"{extra}: {line} has no lower bound"
                found[extra] = min(bounds)
    return found


def defined_in(cls: type, name: str) -> str:
    """The distribution whose class defines trait ``name`` of ``cls`` (jupyterhub, oauthenticator, ...)."""
    owner = next(k for k in cls.__mro__ if name in vars(k))
    return owner.__module__.split(".")[0]


def test_every_trait_medhub_sets_exists_in_the_lowest_version_allowed(tmp_path: Path):
    import jupyterhub.app
    from medhub.auth import OIDCAuthenticator
    from medhub.spawner import MedhubDockerSpawner, MedhubLocalSpawner

    classes = {"JupyterHub": jupyterhub.app.JupyterHub, "MedhubLocalSpawner": MedhubLocalSpawner,
               "MedhubDockerSpawner": MedhubDockerSpawner, "OIDCAuthenticator": OIDCAuthenticator}
    checked = []
    for spawner in ("local", "docker"):
        c = Config()
        public = {"public_url": "http://172.29.0.1:8000", "insecure_http": True} if spawner == "docker" else {}
        configure(c, load(write(tmp_path, with_("hub", spawner=spawner, state_dir=str(tmp_path / "state"), **public))))
        for section, cls in classes.items():
            for name in c[section] if section in c else ():
                trait = cls.class_traits().get(name)
                assert trait is not None, f"{section}.{name} is not a trait of {cls.__name__}"
                added = ADDED.search(trait.help or "")
                package = defined_in(cls, name)
                if added and package in ("jupyterhub", "oauthenticator", "dockerspawner"):
                    floor = min(lowest(package).values())
                    assert Version(added.group(1)) <= floor, (
                        f"{section}.{name} came with {package} {added.group(1)}; pyproject.toml allows {floor}: "
                        "raise the lower bound")
                    checked.append(name)
    assert {"extra_user_scopes", "auth_refresh_strict"} <= set(checked)  # the check reads the docs it relies on


def node_satisfies(version: tuple[int, int, int], spec: str) -> bool:
    """Whether Node.js ``version`` meets an npm ``engines.node`` range of the forms the lock file
    holds: ``*``, ``>=X``, ``>= X``, ``^X`` and ``||`` between them (``x`` parts read as 0)."""
    def parse(text: str) -> tuple[int, int, int]:
        parts = [int(p) if p.isdigit() else 0 for p in text.strip().split(".")]
        return tuple((parts + [0, 0])[:3])

    for alternative in spec.split("||"):
        alternative = alternative.strip()
        if alternative == "*":
            return True
        if alternative.startswith(">="):
            if version >= parse(alternative[2:]):
                return True
        elif alternative.startswith("^"):
            low = parse(alternative[1:])
            if version >= low and version[0] == low[0]:
                return True
        else:
            raise AssertionError(f"engines range {spec!r}: a form this check does not read; extend node_satisfies")
    return False


def test_every_node_package_runs_on_the_node_version_package_json_asks_for():
    """package.json says which Node.js medhub needs; every package of the lock file must accept
    the lowest such version (npm only warns otherwise, and the IdP or proxy may then fail)."""
    import json

    lock = json.loads((ROOT / "package-lock.json").read_text())
    wanted = json.loads((ROOT / "package.json").read_text())["engines"]["node"]
    assert wanted.startswith(">=")
    lowest = tuple(int(p) for p in (wanted[2:].strip().split(".") + ["0", "0"])[:3])
    refusing = {path.split("node_modules/")[-1]: package["engines"]["node"]
                for path, package in lock["packages"].items()
                if path and "node" in package.get("engines", {}) and not node_satisfies(lowest, package["engines"]["node"])}
    assert refusing == {}, f"these packages refuse Node.js {wanted}: pin versions that accept it, or raise engines"
    assert not node_satisfies((20, 20, 2), ">=22.12.0") and node_satisfies((20, 0, 0), "^16 || ^18 || >=20")


def test_every_package_folder_is_in_the_distribution():
    """pyproject.toml lists its packages by name: a new folder left out would be missing from
    every installed image (a wheel holds only what is listed)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for name, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join((name, *relative.parts)))
    assert found - set(setuptools["packages"]) == set()
