"""Making NVIDIA FLARE startup kits medhub's: what a hospital applies to its site's kit, and the
centre to its server's (``medlib federated site|centre``).

A site's kit, in its ``local`` folder (which no job can change):

``authorization.json``  every role of the centre loses bring-your-own-code, shell commands at the
                        site, and server-predeployed Flower apps (:data:`SITE_FORBIDS`); the
                        rest is the kit's default;
``resources.json``      only medlib's executor may be built from a job (class allow-list,
                        enforced), and the site's logs are not streamed to the centre;
``medlib-policy.toml``  the site's policy (:mod:`medlib.train.approval`), checked before it is
                        written.

The server's kit adds medlib's controller to its class allow-list.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MedlibError
from .approval import SitePolicy
from .job import CONTROLLER, EXECUTOR

POLICY_FILE = "medlib-policy.toml"
#: the rights a site denies every role of the centre
SITE_FORBIDS = ("byoc", "shell_commands", "server-predeployed-flwr")


def _local(kit: Path) -> Path:
    local = Path(kit) / "local"
    if not (Path(kit) / "startup").is_dir() or not local.is_dir():
        raise MedlibError(f"{kit} is not a FLARE startup kit (it has no startup/ and local/ folders)")
    return local


def _read(local: Path, name: str) -> dict:
    """``local/<name>``, or the kit's ``<name>.default``."""
    for path in (local / name, local / f"{name}.default"):
        if path.is_file():
            return json.loads(path.read_text())
    raise MedlibError(f"{local} has neither {name} nor {name}.default")


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def harden_site(kit: str | Path, policy: str | Path) -> Path:
    """Apply medhub's site configuration and ``policy`` (a policy file) to a site's startup kit;
    the policy's path in the kit.

    Raises:
        MedlibError: not a startup kit, or a policy that does not load.
    """
    local = _local(Path(kit))
    text = Path(policy).read_text()
    staged = local / f".{POLICY_FILE}.new"
    staged.write_text(text)
    try:
        SitePolicy.load(staged)
    except MedlibError:
        staged.unlink()
        raise
    authorization = _read(local, "authorization.json")
    permissions = authorization["permissions"]
    full = sorted({right for rights in permissions.values() if isinstance(rights, dict) for right in rights})
    for role, rights in list(permissions.items()):
        if not isinstance(rights, dict):  # "any" / "none": spelled out, so that some rights can be withdrawn
            permissions[role] = rights = {right: rights for right in full}
        rights.update({right: "none" for right in SITE_FORBIDS})
    _write(local / "authorization.json", authorization)
    resources = _read(local, "resources.json")
    resources.update(class_list_enforcement_mode="enforce", class_allow_list=[EXECUTOR], allow_log_streaming=False)
    _write(local / "resources.json", resources)
    staged.replace(local / POLICY_FILE)
    return local / POLICY_FILE


def prepare_centre(kit: str | Path) -> Path:
    """Allow medlib's controller in the server's startup kit; the resources file written."""
    local = _local(Path(kit))
    resources = _read(local, "resources.json")
    allowed = list(resources.get("class_allow_list", []))
    if CONTROLLER not in allowed:
        resources["class_allow_list"] = [*allowed, CONTROLLER]
    _write(local / "resources.json", resources)
    return local / "resources.json"
