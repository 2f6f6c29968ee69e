"""Federated recipes: a training task as configuration only, built at the site by code the site
installed.

A recipe is JSON: a model architecture from the allow-list (``allowlist.json``: MONAI networks
by name, with the arguments each may take), the site dataset it trains on (an id the site maps
to its own folder; never a path), transforms, loss and optimizer from the same list, and the
local schedule, privacy and transfer-learning settings as plain values::

    {"format": 1, "name": "lung-seg", "dataset": "lung-ct",
     "model": {"name": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 1,
                                         "channels": [8, 16, 32], "strides": [2, 2]}},
     "transforms": [{"name": "ScaleIntensity", "args": {}}],
     "loss": {"name": "DiceLoss", "args": {"sigmoid": true}},
     "optimizer": {"name": "Adam", "args": {"lr": 0.001}},
     "epochs": 1, "batch_size": 4,
     "privacy": {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5},
     "fine_tune": ["model.2"], "validation": 0.2}

``validation`` is the share of the site's cases held out for the metrics it reports (default
0.2). Nothing in it is code: no pickles, no import paths, no callables; :func:`parse` refuses any key,
name or argument the allow-list does not hold, saying which. Its :attr:`Recipe.digest` (SHA-256
of its canonical JSON) is what a site approves (:mod:`medlib.train.approval`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from typing import Any

from ..contract import is_slug
from ..errors import MedlibError

FORMAT = 1
KINDS = {"architectures": "model", "transforms": "transforms", "losses": "loss", "optimizers": "optimizer"}
FIELDS = ("format", "name", "dataset", "model", "transforms", "loss", "optimizer", "epochs", "batch_size", "privacy",
          "fine_tune", "validation")


class RecipeError(MedlibError, ValueError):
    """A recipe that is not one: the message names the field and what is allowed."""


@lru_cache(maxsize=1)
def allowlist() -> dict[str, dict[str, Any]]:
    """What recipes may name (``allowlist.json``)."""
    data = json.loads(files("medlib.train").joinpath("allowlist.json").read_text())
    return {kind: data[kind] for kind in KINDS}


@dataclass(frozen=True)
class Component:
    """An allow-listed class by name, with its arguments."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "args": dict(sorted(self.args.items()))}


@dataclass(frozen=True)
class Privacy:
    """DP-SGD at the site: per-sample gradients clipped to ``max_grad_norm``, Gaussian noise of
    ``noise_multiplier`` × that norm; ε accounted at ``delta``."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float


@dataclass(frozen=True)
class Recipe:
    """A checked recipe (made by :func:`parse`)."""

    name: str
    dataset: str
    model: Component
    transforms: tuple[Component, ...]
    loss: Component
    optimizer: Component
    epochs: int
    batch_size: int
    privacy: Privacy | None = None
    fine_tune: tuple[str, ...] = ()
    validation: float = 0.2

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "name": self.name, "dataset": self.dataset, "model": self.model.to_json(),
                "transforms": [t.to_json() for t in self.transforms], "loss": self.loss.to_json(),
                "optimizer": self.optimizer.to_json(), "epochs": self.epochs, "batch_size": self.batch_size,
                "privacy": None if self.privacy is None else {"noise_multiplier": self.privacy.noise_multiplier,
                                                               "max_grad_norm": self.privacy.max_grad_norm,
                                                               "delta": self.privacy.delta},
                "fine_tune": list(self.fine_tune), "validation": self.validation}

    def canonical(self) -> bytes:
        """The recipe as canonical JSON: sorted keys, no spaces; what is hashed and signed."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical()).hexdigest()


def _kind_ok(kind: str, value: Any) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "ints":
        return isinstance(value, list) and all(_kind_ok("int", v) for v in value)
    if kind.startswith("str:"):
        return isinstance(value, str) and value in kind[4:].split("|")
    raise RecipeError(f"allowlist.json names an unknown argument kind {kind!r}")


def _described(kind: str) -> str:
    if kind.startswith("str:"):
        return "one of " + ", ".join(kind[4:].split("|"))
    return {"int": "an integer", "float": "a number", "bool": "true or false", "ints": "a list of integers"}[kind]


def _component(kind: str, item: Any, where: str) -> Component:
    if not isinstance(item, dict) or set(item) - {"name", "args"} or "name" not in item:
        raise RecipeError(f"{where}: give {{\"name\": ..., \"args\": {{...}}}}, not {json.dumps(item)[:80]}")
    listed = allowlist()[kind]
    name, args = item["name"], item.get("args", {})
    if name not in listed:
        raise RecipeError(f"{where}: {name!r} is not on the allow-list; choose one of {', '.join(sorted(listed))}")
    if not isinstance(args, dict):
        raise RecipeError(f"{where}.args must be an object of plain values")
    allowed = listed[name]["args"]
    for key, value in args.items():
        if key not in allowed:
            raise RecipeError(f"{where}: {name} takes no argument {key!r} here; allowed: "
                              f"{', '.join(sorted(allowed)) or 'none'}")
        if not _kind_ok(allowed[key], value):
            raise RecipeError(f"{where}: {name}.{key} must be {_described(allowed[key])}, not {json.dumps(value)[:60]}")
    return Component(name, dict(args))


def _number(data: dict, key: str, kind: type, low: float, high: float = math.inf) -> Any:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or \
            not low <= value <= high:
        raise RecipeError(f"{key} must be a{'n integer' if kind is int else ' number'} from {low} to {high}, "
                          f"not {json.dumps(value)}")
    return kind(value)


def parse(document: str | bytes | dict[str, Any]) -> Recipe:
    """Check a recipe (JSON text, or its decoded object) against the allow-list.

    Raises:
        RecipeError: not JSON, an unknown field, a name or argument not allowed, a dataset that
            is not an id.
    """
    if isinstance(document, (str, bytes)):
        try:
            document = json.loads(document)
        except (ValueError, UnicodeDecodeError) as e:
            raise RecipeError(f"a recipe is JSON: {e}") from None
    if not isinstance(document, dict):
        raise RecipeError("a recipe is a JSON object")
    unknown = sorted(set(document) - set(FIELDS))
    if unknown:
        raise RecipeError(f"unknown field(s) {', '.join(unknown)}: a recipe holds only {', '.join(FIELDS)}")
    if document.get("format") != FORMAT:
        raise RecipeError(f"format must be {FORMAT}")
    name, dataset = document.get("name"), document.get("dataset")
    if not isinstance(name, str) or not name:
        raise RecipeError("name must be a non-empty string")
    if not is_slug(dataset):
        raise RecipeError(f"dataset must be a dataset id the site maps to its own data, not {json.dumps(dataset)}")
    transforms = document.get("transforms", [])
    if not isinstance(transforms, list):
        raise RecipeError("transforms must be a list")
    privacy = document.get("privacy")
    if privacy is not None:
        if not isinstance(privacy, dict) or set(privacy) != {"noise_multiplier", "max_grad_norm", "delta"}:
            raise RecipeError("privacy must be {noise_multiplier, max_grad_norm, delta}, or null")
        privacy = Privacy(_number(privacy, "noise_multiplier", float, 0.0), _number(privacy, "max_grad_norm", float, 1e-6),
                          _number(privacy, "delta", float, 1e-12, 0.1))
    fine_tune = document.get("fine_tune", [])
    if not isinstance(fine_tune, list) or not all(isinstance(p, str) and p for p in fine_tune):
        raise RecipeError("fine_tune must be a list of parameter name prefixes (empty: train every layer)")
    return Recipe(
        name=name, dataset=dataset,
        model=_component("architectures", document.get("model"), "model"),
        transforms=tuple(_component("transforms", t, f"transforms[{i}]") for i, t in enumerate(transforms)),
        loss=_component("losses", document.get("loss"), "loss"),
        optimizer=_component("optimizers", document.get("optimizer"), "optimizer"),
        epochs=_number(document, "epochs", int, 1, 10_000), batch_size=_number(document, "batch_size", int, 1, 100_000),
        privacy=privacy, fine_tune=tuple(fine_tune),
        validation=_number(document, "validation", float, 0.0, 0.5) if "validation" in document else 0.2)


def _class(kind: str, name: str):
    module, _, attribute = allowlist()[kind][name]["class"].rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def build_model(recipe: Recipe):
    """The recipe's network; with ``fine_tune``, only parameters under those prefixes train.

    Raises:
        RecipeError: a prefix that names no parameter of the network.
    """
    model = _class("architectures", recipe.model.name)(**recipe.model.args)
    if recipe.fine_tune:
        names = [n for n, _ in model.named_parameters()]
        idle = [p for p in recipe.fine_tune if not any(n.startswith(p) for n in names)]
        if idle:
            raise RecipeError(f"fine_tune: no parameter of {recipe.model.name} starts with {', '.join(idle)}; "
                              f"its parameters start with {', '.join(sorted({n.split('.')[0] for n in names}))}")
        for parameter_name, parameter in model.named_parameters():
            parameter.requires_grad = any(parameter_name.startswith(p) for p in recipe.fine_tune)
    return model


def build_transforms(recipe: Recipe):
    """The recipe's transforms, composed (MONAI ``Compose``), on samples that are dicts of
    "image" and "label"; each acts on the keys the allow-list gives it."""
    from monai.transforms import Compose

    listed = allowlist()["transforms"]
    return Compose([_class("transforms", t.name)(keys=listed[t.name]["keys"], **t.args) for t in recipe.transforms])


def build_loss(recipe: Recipe):
    return _class("losses", recipe.loss.name)(**recipe.loss.args)


def build_optimizer(recipe: Recipe, model):
    """The recipe's optimizer over the parameters that train."""
    return _class("optimizers", recipe.optimizer.name)([p for p in model.parameters() if p.requires_grad],
                                                     **recipe.optimizer.args)
