"""Federated recipes (medlib.train.recipe) and a site's approval of them (medlib.train.approval):
configuration only, built from an allow-list by code the site installed; what the site did not
approve, or that reaches beyond its caps or its datasets, is refused, saying what to approve."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import tomli_w
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medlib.train.approval import Refused, SitePolicy, public_key_text, sign
from medlib.train.recipe import RecipeError, build_loss, build_model, build_optimizer, build_transforms, parse

RECIPE = {
    "format": 1, "name": "spheres", "dataset": "spheres-ct",
    "model": {"name": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "channels": [4, 8],
                                        "strides": [2]}},
    "transforms": [{"name": "ScaleIntensity", "args": {"minv": 0.0, "maxv": 1.0}}],
    "loss": {"name": "DiceLoss", "args": {"sigmoid": True}},
    "optimizer": {"name": "Adam", "args": {"lr": 0.001}},
    "epochs": 1, "batch_size": 2,
    "privacy": {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5},
    "fine_tune": [],
}


def changed(**fields) -> dict:
    recipe = copy.deepcopy(RECIPE)
    recipe.update(fields)
    return recipe


def test_a_recipe_builds_the_network_loss_optimizer_and_transforms_it_names():
    recipe = parse(json.dumps(RECIPE))
    model = build_model(recipe)
    optimizer = build_optimizer(recipe, model)
    loss = build_loss(recipe)(model(torch.rand(1, 1, 8, 8, 8)), torch.ones(1, 1, 8, 8, 8))
    loss.backward()
    optimizer.step()
    assert type(model).__name__ == "UNet" and type(optimizer).__name__ == "Adam"
    sample = build_transforms(recipe)({"image": torch.full((1, 2, 2, 2), 5.0), "label": torch.full((1, 2, 2, 2), 5.0)})
    assert float(sample["image"].max()) <= 1.0 and float(sample["label"].max()) == 5.0  # intensity: the image only
    # the digest is the content's: key order and spacing do not change it, any value does
    reordered = json.dumps(dict(reversed(list(RECIPE.items()))), indent=3)
    assert parse(reordered).digest == recipe.digest
    assert parse(changed(epochs=2)).digest != recipe.digest


def test_transfer_learning_trains_only_the_layers_named():
    recipe = parse(changed(fine_tune=["model.2"]))
    model = build_model(recipe)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("model.2") for n in trained)
    assert len(build_optimizer(recipe, model).param_groups[0]["params"]) == len(trained)
    with pytest.raises(RecipeError, match="no parameter of UNet starts with decoder"):
        build_model(parse(changed(fine_tune=["decoder"])))


@pytest.mark.parametrize("recipe, message", [
    (changed(model={"name": "EvilNet", "args": {}}), "'EvilNet' is not on the allow-list"),
    (changed(model={"name": "UNet", "args": {"act": "os.system"}}), "UNet.act must be one of PRELU, RELU, LEAKYRELU"),
    (changed(model={"name": "UNet", "args": {"spatial_dims": 3, "pretrained_path": "/etc/passwd"}}),
     "takes no argument 'pretrained_path'"),
    (changed(transforms=[{"name": "Lambda", "args": {}}]), r"transforms\[0\]: 'Lambda' is not on the allow-list"),
    (changed(loss={"name": "DiceLoss", "args": {"sigmoid": "yes"}}), "DiceLoss.sigmoid must be true or false"),
    (changed(dataset="../../etc"), "dataset must be a dataset id"),
    (changed(dataset="/data/other-site"), "dataset must be a dataset id"),
    (changed(code="import os; os.system('curl ...')"), "unknown field"),
    (changed(epochs=True), "epochs must be an integer"),
    (changed(optimizer={"name": "Adam", "args": {"lr": float("nan")}}), "Adam.lr must be a number"),
])
def test_anything_beyond_plain_allow_listed_configuration_is_refused(recipe, message):
    with pytest.raises(RecipeError, match=message):
        parse(recipe)


def test_a_pickle_is_no_recipe():
    with pytest.raises(RecipeError, match="a recipe is JSON"):
        parse(pickle.dumps(RECIPE))


@pytest.fixture
def policy(tmp_path: Path):
    approver = Ed25519PrivateKey.generate()
    approved = parse(RECIPE)
    path = tmp_path / "federated.toml"
    path.write_text(tomli_w.dumps({
        "site": "site-a", "approved": [approved.digest], "signers": [public_key_text(approver)], "max_epochs": 3,
        "require_privacy": True, "min_noise_multiplier": 0.8, "datasets": {"spheres-ct": str(tmp_path / "data")}}))
    return SitePolicy.load(path), approver


def test_a_site_runs_what_it_approved_by_digest_or_by_signature(policy, tmp_path: Path):
    site, approver = policy
    recipe, folder = site.decide(json.dumps(RECIPE).encode())
    assert recipe.name == "spheres" and folder == tmp_path / "data"
    other = parse(changed(name="spheres, second run", epochs=2))
    assert site.decide(other.canonical(), sign(other, approver))[0].epochs == 2


def test_a_site_refuses_what_it_did_not_approve_saying_what_to_approve(policy):
    site, approver = policy
    altered = parse(changed(optimizer={"name": "Adam", "args": {"lr": 0.1}}))  # changed after approval
    with pytest.raises(Refused, match=f"has not approved recipe 'spheres' \\({altered.digest}\\): add that digest"):
        site.decide(altered.canonical())
    signed = parse(changed(epochs=2))
    signature = sign(signed, approver)
    tampered = parse(changed(epochs=3))
    with pytest.raises(Refused, match="has not approved"):  # a signature covers exactly what was signed
        site.decide(tampered.canonical(), signature)
    with pytest.raises(Refused, match="has not approved"):  # nor does another key's signature count
        site.decide(signed.canonical(), sign(signed, Ed25519PrivateKey.generate()))


def test_a_site_holds_approved_recipes_to_its_caps_and_its_datasets(policy):
    site, approver = policy

    def signed(**fields) -> tuple[bytes, bytes]:
        recipe = parse(changed(**fields))
        return recipe.canonical(), sign(recipe, approver)

    with pytest.raises(Refused, match="at most 3 local epochs"):
        site.decide(*signed(epochs=10))
    with pytest.raises(Refused, match="requires differential privacy"):
        site.decide(*signed(privacy=None))
    with pytest.raises(Refused, match="noise multiplier of at least 0.8"):
        site.decide(*signed(privacy={"noise_multiplier": 0.1, "max_grad_norm": 1.0, "delta": 1e-5}))
    with pytest.raises(Refused, match="holds no dataset 'lung-ct'"):
        site.decide(*signed(dataset="lung-ct"))
    with pytest.raises(Refused, match="refuses the job: a recipe is JSON"):
        site.decide(pickle.dumps(RECIPE))
