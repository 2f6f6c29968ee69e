"""Print the JupyterHub traits a hub configuration file results in, as JSON.

    python hub_traits.py medhub                      # medhub's jupyterhub_config.py ($MEDHUB_SETTINGS)
    python hub_traits.py chart CHART VALUES ROOT     # Zero to JupyterHub's, with VALUES, as the hub pod

``chart`` runs the chart's own ``files/hub/jupyterhub_config.py`` and ``z2jh.py`` (CHART, the
chart's folder at the version medhub pins) as the chart's hub pod does: VALUES merged into the
chart's defaults in its Secret, the chart's names in its ConfigMap, ``hub.extraFiles`` and
``hub.extraEnv`` in place. ROOT stands for ``/usr/local/etc/jupyterhub`` (the chart's files are
relocated there unless ROOT is that folder, as in the hub image's container); mounts of
``hub.extraFiles`` go under ROOT too. Secret-held environment values are ``secret:<key>``, or
``$MEDHUB_TEST_SECRET_<KEY>`` where set.

The output maps JupyterHub, the authenticator class and the spawner class to the traits the
configuration sets on them (merged along each class's MRO, as traitlets does), callables as
their qualified names; ``missing`` lists keys that are no trait of their class: a JupyterHub
or spawner without a feature the configuration uses.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

CHART_ROOT = "/usr/local/etc/jupyterhub"


def merge(base: Any, extra: Any) -> Any:
    """``extra`` over ``base``, tables merged key by key (as Helm merges values)."""
    if isinstance(base, dict) and isinstance(extra, dict):
        return {**base, **{k: merge(base.get(k), v) for k, v in extra.items()}}
    return extra


def chart_pod(chart: Path, values_file: Path, root: Path) -> Path:
    """Lay out ROOT as the chart's hub pod has it; returns the configuration file."""
    import yaml

    values = merge(yaml.safe_load((chart / "values.yaml").read_text()), yaml.safe_load(values_file.read_text()))
    values["Chart"] = {"Name": "jupyterhub", "Version": chart.name.split("-", 1)[1]}
    values["Release"] = {"Name": "medhub", "Namespace": "medhub"}
    (root / "secret").mkdir(parents=True, exist_ok=True)
    (root / "config").mkdir(exist_ok=True)
    (root / "secret" / "values.yaml").write_text(yaml.safe_dump(values))
    secrets = ["hub.config.JupyterHub.cookie_secret", "hub.config.CryptKeeper.keys",
               "hub.config.ConfigurableHTTPProxy.auth_token",
               *(f"hub.services.{name}.apiToken" for name in values["hub"].get("services") or {})]
    for key in secrets:
        (root / "secret" / key).write_text("0" * 64)
    for name in ("hub", "proxy-api", "proxy-public", "proxy-http", "singleuser", "image-pull-secret",
                 "user-scheduler", "priority", "hub-existing-secret", "hub-pvc"):
        (root / "config" / name).write_text(name)
    for name in ("jupyterhub_config.py", "z2jh.py"):
        text = (chart / "files" / "hub" / name).read_text()
        (root / name).write_text(text.replace(CHART_ROOT, str(root)))
    mounts: dict[str, str] = {}
    for entry in (values["hub"].get("extraFiles") or {}).values():
        target = root / "mounts" / entry["mountPath"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = entry.get("stringData") or entry.get("data")
        target.write_text(data if isinstance(data, str) else json.dumps(data))
        mounts[entry["mountPath"]] = str(target)
    env = {"POD_NAMESPACE": "medhub", "HELM_RELEASE_NAME": "medhub", "HUB_SERVICE_PORT": "8081",
           "PROXY_API_SERVICE_PORT": "8001", "PROXY_PUBLIC_SERVICE_HOST": "proxy-public",
           "PROXY_PUBLIC_SERVICE_PORT_HTTP": "80"}
    for name, value in (values["hub"].get("extraEnv") or {}).items():
        if isinstance(value, dict):
            key = value["valueFrom"]["secretKeyRef"]["key"]
            value = os.environ.get("MEDHUB_TEST_SECRET_" + key.upper().replace("-", "_"), f"secret:{key}")
        env[name] = mounts.get(value, value)
    os.environ.update(env)
    return root / "jupyterhub_config.py"


def _name(value: Any) -> Any:
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return repr(value)


def _class(value: Any) -> type:
    if isinstance(value, str):
        module, _, name = value.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return value


def traits(config_file: Path) -> dict[str, Any]:
    from jupyterhub.app import JupyterHub
    from traitlets.config.loader import LazyConfigValue, PyFileConfigLoader

    sys.path.insert(0, str(config_file.parent))
    with contextlib.redirect_stdout(sys.stderr):  # the chart's configuration prints what it loads
        c = PyFileConfigLoader(config_file.name, path=str(config_file.parent)).load_config()
    out: dict[str, Any] = {"missing": []}
    hub = {k: v for k, v in c.get("JupyterHub", {}).items()}
    classes = {"JupyterHub": JupyterHub, "Authenticator": _class(hub["authenticator_class"]),
               "Spawner": _class(hub["spawner_class"])}
    for label, cls in classes.items():
        merged: dict[str, Any] = {}
        for klass in reversed(cls.mro()):
            if klass.__name__ in c:
                merged.update(c[klass.__name__])
        known = cls.class_traits(config=True)
        out["missing"] += [f"{cls.__name__}.{k}" for k in merged if k not in known]
        out[label] = {k: v.get_value(known[k].default()) if isinstance(v, LazyConfigValue) else v
                      for k, v in merged.items()}
    out["classes"] = {label: _name(cls) for label, cls in classes.items()}
    return json.loads(json.dumps(out, default=_name))


def main(argv: list[str]) -> None:
    if argv[:1] == ["medhub"]:
        import medhub

        config_file = Path(medhub.__file__).with_name("jupyterhub_config.py")
    elif argv[:1] == ["chart"] and len(argv) == 4:
        config_file = chart_pod(Path(argv[1]), Path(argv[2]), Path(argv[3]))
    else:
        raise SystemExit(__doc__)
    print(json.dumps(traits(config_file), indent=1, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
