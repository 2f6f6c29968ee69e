"""Federated training on a real NVIDIA FLARE federation (three sites on loopback, POC mode with
mutual TLS): what the sites run, what they refuse, and what leaves them."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import nibabel
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medlib.train import weights
from medlib.train.approval import public_key_text, sign
from medlib.train.job import TASK_REQUEST_INTERVAL, write_job
from medlib.train.recipe import build_model, parse

from flare import ADMIN, Federation

from medhub.processes import free_port

SITES = ["site-a", "site-b", "site-c"]
RECIPE = {
    "format": 1, "name": "spheres", "dataset": "spheres",
    "model": {"name": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "channels": [4, 8],
                                       "strides": [2], "num_res_units": 1, "norm": "INSTANCE"}},
    "transforms": [{"name": "ScaleIntensity", "args": {}}],
    "loss": {"name": "DiceLoss", "args": {"sigmoid": True}},
    "optimizer": {"name": "Adam", "args": {"lr": 0.01}},
    "epochs": 1, "batch_size": 2, "validation": 0.25,
}
SIGNER = Ed25519PrivateKey.generate()


def write_cases(folder: Path, n: int, seed: int) -> list[bytes]:
    """``n`` NIfTI image/label pairs of spheres; the raw bytes of every image (to search for)."""
    from monai.data import create_test_image_3d

    raws = []
    for i in range(n):
        image, label = create_test_image_3d(16, 16, 16, num_objs=2, rad_min=2, rad_max=4, noise_max=0.3,
                                            random_state=np.random.RandomState(seed * 1000 + i))
        image = image.astype(np.float32)
        for sub, data in (("images", image), ("labels", label.astype(np.float32))):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), folder / sub / f"case{i:02d}.nii.gz")
        raws.append(image.tobytes())
    return raws


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("flare")
    data, policies = {}, {}
    for index, site in enumerate(SITES):
        folder = root / "hospitals" / site / "spheres"
        data[site] = write_cases(folder, 4 + 2 * index, seed=index + 1)
        policies[site] = (f'site = "{site}"\napproved = ["{parse(RECIPE).digest}"]\n'
                          f'signers = ["{public_key_text(SIGNER)}"]\nmax_epochs = 3\n'
                          f'models = "{root / "hospitals" / site / "models"}"\n'
                          f'[datasets]\nspheres = "{folder}"\n')
    fed = Federation(root / "engine", SITES, policies)
    fed.start()
    try:
        fed.wait_for_sites(SITES)
        fed.data = data
        fed.root = root
        yield fed
    finally:
        fed.stop()


def run_job(fed: Federation, folder: Path, timeout: float = 240) -> tuple[str, str]:
    """Submit a job folder as the engine's admin; its id and final status."""
    return run_jobs(fed, [folder], timeout)[0]


def run_jobs(fed: Federation, folders: list[Path], timeout: float = 240) -> list[tuple[str, str]]:
    """Submit job folders together (the engine runs up to 4 at once), as the engine's admin;
    the id and final status of each."""
    session = fed.session()
    try:
        jobs = [session.submit_job(str(folder)) for folder in folders]
        deadline = time.monotonic() + timeout
        while True:
            statuses = [session.get_job_meta(job).get("status", "") for job in jobs]
            if all(s.startswith("FINISHED") for s in statuses) or time.monotonic() > deadline:
                return list(zip(jobs, statuses))
            time.sleep(0.5)
    finally:
        session.close()


def outputs(fed: Federation, job: str, into: Path) -> Path:
    """The job's run folder at the centre, downloaded as its admin: its ``medlib`` folder."""
    session = fed.session()
    try:
        found = Path(session.download_job_result(job, str(into)))
    finally:
        session.close()
    return next(found.rglob("medlib/result.json")).parent


def test_three_sites_train_a_monai_unet_and_each_keeps_the_final_model(federation, tmp_path):
    recipe = parse(RECIPE)
    folder = write_job(tmp_path / "job", run="run-happy", recipe=recipe, sites=SITES, rounds=2, round_timeout=120)
    job, status = run_job(federation, folder)
    assert status == "FINISHED:COMPLETED", status
    out = outputs(federation, job, tmp_path / "out")
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed", result
    assert [r["sites"] for r in result["history"]] == [SITES, SITES]
    assert result["provenance"]["recipe"] == recipe.digest and result["provenance"]["rounds"] == 2
    arrays, metadata = weights.load(out / "model.safetensors")
    for site in SITES:
        kept, kept_meta = weights.load(federation.root / "hospitals" / site / "models" / "spheres" / "run-happy.safetensors")
        assert all(np.array_equal(kept[k], arrays[k]) for k in arrays)
        assert json.loads(kept_meta["provenance"])["site"] == site
    # everything the centre holds of the job (what the sites sent, its logs): no image, no case, no path
    held = b"".join(p.read_bytes() for p in out.parent.rglob("*") if p.is_file())
    for site, raws in federation.data.items():
        for raw in raws:
            assert not any(raw[i:i + 64] in held for i in range(0, len(raw), 4096)), site
    assert b"case0" not in held and b"hospitals" not in held
    # each site's audit log has every task: the recipe, who asked, the dataset and what was sent
    for site in SITES:
        log = (federation.kit(site) / job / "audit.log").read_text()
        assert log.count("medlib.train") == 2 and log.count("medlib.aggregate") == 2 and "medlib.keep" in log
        sent = [json.loads(line[line.index("{"):]) for line in log.splitlines() if "[A:medlib.aggregate]" in line]
        masked = np.load(next(out.glob(f"received/round-0001-aggregate-{site}-masked.npy")))
        assert sent[-1]["sent"]["masked"]["sha256"] == "sha256:" + hashlib.sha256(masked.tobytes()).hexdigest()
        assert sent[-1]["recipe"] == recipe.digest and sent[-1]["dataset"] == "spheres"


#: A centre running code of its own (a compromised server): it sends the sites whatever it likes
#: and writes down what came back. Strings "hex:…" in a payload are sent as those raw bytes.
ATTACKER = '''
import json, os
from nvflare.apis.controller_spec import Task
from nvflare.apis.impl.controller import Controller
from nvflare.apis.shareable import Shareable


class Attacker(Controller):
    def __init__(self, tasks):
        super().__init__()
        self.tasks = tasks

    def start_controller(self, fl_ctx):
        pass

    def stop_controller(self, fl_ctx):
        pass

    def process_result_of_unknown_task(self, *args):
        pass

    def value(self, v, recipe, answers):
        if v == "$weights":  # the recipe's initial weights, made here with medlib's own builder
            from medlib.train import weights
            from medlib.train.recipe import build_model, parse
            return weights.to_arrays(build_model(parse(recipe)))
        if v == "$publics":  # the one-round keys the sites sent with their last answers
            return {site: r["public"] for site, r in answers.items() if "public" in r}
        return bytes.fromhex(v[4:]) if isinstance(v, str) and v.startswith("hex:") else v

    def control_flow(self, abort_signal, fl_ctx):
        replies, answers = [], {}
        for name, data in self.tasks:
            payload = Shareable()
            payload.update({k: self.value(v, data.get("$recipe"), answers) for k, v in data.items() if k != "$recipe"})
            task = Task(name=name, data=payload, timeout=60)
            sites = [c.name for c in fl_ctx.get_engine().get_clients()]
            self.broadcast_and_wait(task, fl_ctx, targets=sites, min_responses=len(sites), abort_signal=abort_signal)
            for client_task in task.client_tasks:
                r = client_task.result
                if r is not None and "public" in r:
                    answers[client_task.client.name] = dict(r)
                replies.append({"task": name, "site": client_task.client.name,
                                "rc": r.get_return_code() if r is not None else None,
                                "refused": r.get_header("medlib.refused") if r is not None else None,
                                "sent": {k: (v.hex() if isinstance(v, bytes) else repr(v)[:200])
                                         for k, v in (r or {}).items() if k != "__headers__"}})
        run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
        with open(os.path.join(run_dir, "attack.json"), "w") as f:
            json.dump(replies, f)
'''


class OpensAFile:
    """Unpickling this creates ``path``: the proof that a site ran the sender's code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def attack_job(folder: Path, recipe: dict, tasks: list, signature: bytes | None = None,
               site_code: str | None = None) -> Path:
    """A job straight to the engine, past the platform: medlib's executor at the sites with
    ``recipe`` (or, with ``site_code``, an executor of the job's own), the attacker at the centre."""
    meta = {"name": "attack", "resource_spec": {}, "min_clients": 1, "deploy_map": {"centre": ["server"], "site": SITES}}
    (folder / "centre" / "config").mkdir(parents=True)
    (folder / "centre" / "custom").mkdir()
    (folder / "centre" / "custom" / "attacker.py").write_text(ATTACKER)
    (folder / "centre" / "config" / "config_fed_server.json").write_text(json.dumps(
        {"format_version": 2, "server": {"task_request_interval": TASK_REQUEST_INTERVAL},
         "workflows": [{"id": "attack", "path": "attacker.Attacker", "args": {"tasks": tasks}}], "components": []}))
    executor = {"path": "medlib.train.site.RecipeExecutor",
                "args": {"run": "attack", "recipe": recipe, "signature": signature.hex() if signature else ""}}
    if site_code is not None:
        (folder / "site" / "custom").mkdir(parents=True)
        (folder / "site" / "custom" / "evil.py").write_text(site_code)
        executor = {"path": "evil.Evil", "args": {}}
    (folder / "site" / "config").mkdir(parents=True, exist_ok=True)
    (folder / "site" / "config" / "config_fed_client.json").write_text(json.dumps(
        {"format_version": 2, "executors": [{"tasks": ["*"], "executor": executor}], "components": []}))
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def attack(fed: Federation, tmp_path: Path, recipe: dict, tasks: list, **kwargs) -> list[dict]:
    job, _ = run_job(fed, attack_job(tmp_path / "job", recipe, tasks, **kwargs))
    return attack_replies(fed, job, tmp_path / "out")


def attack_replies(fed: Federation, job: str, into: Path) -> list[dict]:
    """What every site answered the attacker of ``job`` (downloaded as the engine's admin)."""
    session = fed.session()
    try:
        found = Path(session.download_job_result(job, str(into)))
    finally:
        session.close()
    replies = json.loads(next(found.rglob("attack.json")).read_text())
    assert {r["site"] for r in replies} == set(SITES), replies
    return replies


def changed(**fields) -> dict:
    recipe = json.loads(json.dumps(RECIPE))
    recipe.update(fields)
    return recipe


#: Recipes a site must refuse, and what its refusal says (signed where only the site's policy
#: or data can refuse them).
REFUSED = {
    "architecture": (changed(model={"name": "TorchScript", "args": {}}), "'TorchScript' is not on the allow-list"),
    "transform": (changed(transforms=[{"name": "Lambda", "args": {}}]), "'Lambda' is not on the allow-list"),
    "path": (changed(dataset="../../../etc"), "dataset must be a dataset id"),
    "dataset": (changed(dataset="another-sites-data"), "holds no dataset 'another-sites-data'"),  # signed: approved
    "epochs": (changed(epochs=4), "runs at most 3 local epochs"),  # signed: approved
    "unapproved": (changed(epochs=2), "has not approved recipe 'spheres' (sha256:"),
}


@pytest.fixture(scope="module")
def refusals(federation, tmp_path_factory) -> dict[str, list[dict]]:
    """Every site's answer to a training task under each recipe of :data:`REFUSED`: one job a
    recipe, submitted together."""
    root = tmp_path_factory.mktemp("refusals")
    folders = []
    for case, (recipe, says) in REFUSED.items():
        signature = sign(parse(recipe), SIGNER) if "approved" not in says and "allow-list" not in says \
            and "dataset id" not in says else None
        folders.append(attack_job(root / case / "job", recipe, [["train", {"round": 0, "weights": {}}]],
                                  signature=signature))
    jobs = run_jobs(federation, folders)
    return {case: attack_replies(federation, job, root / case / "out") for case, (job, _) in zip(REFUSED, jobs)}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_site_refuses_a_recipe_it_has_not_approved_and_says_what_to_approve(refusals, case):
    says = REFUSED[case][1]
    for reply in refusals[case]:
        assert reply["rc"] == "BAD_TASK_DATA" and says in reply["refused"], reply
        assert set(reply["sent"]) == set(), reply  # the refusal's message is a header: no body


def test_a_recipe_changed_after_it_was_signed_is_refused(federation, tmp_path):
    signed = changed(epochs=2, name="spheres-signed")
    signature = sign(parse(signed), SIGNER)
    altered = changed(epochs=3, name="spheres-signed")
    (ok, _), (changed_job, _) = run_jobs(federation, [
        attack_job(tmp_path / "ok" / "job", signed, [["keep", {"round": 0, "weights": {}}]], signature=signature),
        attack_job(tmp_path / "altered" / "job", altered, [["train", {"round": 0, "weights": {}}]], signature=signature)])
    assert "has not approved" not in json.dumps(attack_replies(federation, ok, tmp_path / "ok" / "out"))
    for reply in attack_replies(federation, changed_job, tmp_path / "altered" / "out"):
        assert reply["rc"] == "BAD_TASK_DATA" and "has not approved recipe 'spheres-signed'" in reply["refused"]


def test_a_site_never_unpickles_what_the_centre_sends(federation, tmp_path):
    import cloudpickle
    import pickle

    marker = tmp_path / "unpickled"
    before = {p: p.read_bytes() for p in (federation.root / "hospitals").rglob("*.nii.gz")}
    steal = federation.root / "hospitals" / "site-a" / "spheres" / "images" / "case00.nii.gz"
    dask_style = cloudpickle.dumps(lambda: open(steal, "rb").read())  # what Client.submit sends a worker
    replies = attack(federation, tmp_path, RECIPE, [
        ["train", {"round": 0, "weights": "hex:" + pickle.dumps(OpensAFile(str(marker))).hex()}],
        ["train", {"round": 0, "weights": "hex:" + dask_style.hex(), "function": "hex:" + dask_style.hex()}],
        ["run", {"round": 0, "function": "hex:" + dask_style.hex()}],
    ])
    assert not marker.exists()
    for reply in replies:
        assert reply["rc"] == "BAD_TASK_DATA", reply
        assert "weights must be a mapping" in reply["refused"] or "runs only the tasks" in reply["refused"], reply
        assert reply["sent"] == {}
    assert {p: p.read_bytes() for p in (federation.root / "hospitals").rglob("*.nii.gz")} == before  # untouched


def test_a_job_with_code_for_the_sites_is_refused_by_every_site(federation, tmp_path):
    marker = tmp_path / "ran"
    code = f"from pathlib import Path\nPath({str(marker)!r}).touch()\nclass Evil:\n    pass\n"
    session = federation.session()
    try:
        job = session.submit_job(str(attack_job(tmp_path / "job", RECIPE, [], site_code=code)))
        deadline = time.monotonic() + 60
        while not session.get_job_meta(job).get("status", "").startswith("FINISHED") and time.monotonic() < deadline:
            time.sleep(0.5)
        status = session.get_job_meta(job).get("status", "")
    finally:
        session.close()
    assert not marker.exists()
    assert status != "FINISHED:COMPLETED", status
    deploy = next(line for line in (federation.kit("server") / "log.txt").read_text().splitlines()
                  if job in line and "deploy failure" in line)
    for site in SITES:  # each site answered the deployment with its refusal; nothing of the job is there
        assert f"{site}: NVFLARE_ERROR: BYOC not permitted" in deploy
        assert not (federation.kit(site) / job).exists()


def test_a_site_killed_mid_run_rejoins_and_the_run_completes(federation, tmp_path):
    from medlib.train.runs import FINAL, Engine, advance, new_run

    engine = Engine(federation.kit("admin@nvidia.com"), "admin@nvidia.com")
    run = new_run("run-rejoin", RECIPE, sites=SITES, rounds=3, requester="ada", round_timeout=120)
    killed = restarted = False
    deadline = time.monotonic() + 240
    while run["state"] not in FINAL and time.monotonic() < deadline:
        run = advance(run, engine, tmp_path / "run")
        # killed while the job trains: no round can end without site-c until the job is replaced
        if not killed and run["state"] == "running" and engine.progress(run["jobs"][-1]).get("state") == "training":
            federation.kill("site-c")
            killed = time.monotonic()
        if killed and not restarted and time.monotonic() - killed > 3:
            federation.start("site-c")
            restarted = True
        time.sleep(0.5)
    assert run["state"] == "completed", run["message"]
    assert len(run["jobs"]) >= 2  # the restarted site-c no longer ran the job: a new one took it back
    rounds = [r["round"] for r in run["history"]]
    assert len(rounds) == 3 and rounds == sorted(set(rounds)), rounds  # three rounds, no number used twice
    assert rounds != list(range(3))  # the round under way when the job stopped is not taken up again
    assert all(r["sites"] == SITES for r in run["history"]), [(r["round"], r["sites"], r["skipped"]) for r in run["history"]]
    arrays, metadata = weights.load(run["model"])
    provenance = json.loads(metadata["provenance"])
    assert provenance["sites"] == SITES and provenance["recipe"] == parse(RECIPE).digest


# -- through the platform: the hub's medhub-federated service, with users' own tokens ------------


@pytest.fixture(scope="module")
def hub(federation, tmp_path_factory):
    """The platform, with the federation's admin kit given to its federated service only."""
    from conftest import start_platform, stop_platform

    root = tmp_path_factory.mktemp("federated-hub")
    models = root / "models"
    models.mkdir()
    dataset = {"id": "fed-models", "title": "Federated models", "location": str(models), "groups": ["radiology-research"],
               "owners": ["radiology-research"], "sensitivity": "anonymized", "licence": "CC-BY-4.0", "modality": "CT",
               "versioned": True}
    section = {"enabled": True, "port": free_port(), "admin_kit": str(federation.kit(ADMIN)), "admin": ADMIN,
               "sites": SITES, "groups": ["radiology-research"], "models_dataset": "fed-models", "poll_seconds": 0.5,
               "round_timeout": 120}
    platform = start_platform(root, sections={"federated": section}, datasets=(dataset,))
    try:
        for user in ("alice", "bob"):  # users exist once they have logged in
            assert platform.login(platform.browser(), user).status_code == 200
        platform.models = models
        yield platform
    finally:
        stop_platform(platform)


def user_token(hub, user: str) -> str:
    token = hub.api("POST", f"/users/{user}/tokens", json={"note": "federated test"}).json()["token"]
    deadline = time.monotonic() + 60
    while True:  # the hub starts its services without waiting for them to listen
        response = httpx.get(f"{hub.url}/services/medhub-federated/runs", headers={"Authorization": f"token {token}"})
        if response.status_code == 200 or time.monotonic() > deadline:
            return token
        time.sleep(0.5)


def run_events(hub, run_id: str) -> list[tuple[str, str]]:
    response = httpx.get(f"{hub.url}/services/medhub-audit/events", params={"action": None},
                         headers={"Authorization": f"token {hub.observer_token}"}, timeout=30)
    return [(e["action"], e["outcome"], e["actor"]["source"]) for e in response.json()["events"]
            if e["object"].get("run") == run_id]


def test_a_researcher_trains_from_a_notebook_call_and_the_model_is_versioned_with_its_provenance(hub):
    from medlib import versions
    from medlib.train import federated_fit, follow

    token = user_token(hub, "alice")
    started = federated_fit(RECIPE, sites=SITES, rounds=2, wait=False, hub=hub.url, token=token)
    for issued in hub.api("GET", "/users/alice/tokens").json()["api_tokens"]:  # as when her server stops:
        hub.api("DELETE", f"/users/alice/tokens/{issued['id']}")             # the run goes on without it
    run = follow(started.id, progress=False, hub=hub.url, token=user_token(hub, "alice"))
    assert run.state == "completed" and run.version == "v000001", run.message
    assert [r["sites"] for r in run.history] == [SITES, SITES]
    provenance = versions.provenance(hub.models, run.version)
    assert provenance["sites"] == SITES and provenance["rounds"] == 2 and provenance["recipe"] == parse(RECIPE).digest
    assert provenance["requester"] == "alice" and provenance["epsilon"] is None
    model = versions.resolve(hub.models, run.version) / "spheres" / "model.safetensors"
    assert set(weights.load(model)[0]) == set(weights.to_arrays(build_model(parse(RECIPE))))
    assert run_events(hub, run.id) == [("train-start", "success", "federated"), ("train-end", "success", "federated")]


def test_the_service_takes_only_a_recipe_from_a_member_and_reports_a_sites_refusal(hub):
    from medlib.train import TrainError, federated_fit

    alice = {"Authorization": f"token {user_token(hub, 'alice')}"}
    url = f"{hub.url}/services/medhub-federated/runs"
    smuggled = {"recipe": RECIPE, "sites": SITES, "rounds": 1, "function": "gASVIAAAAAAAAAC..."}
    response = httpx.post(url, json=smuggled, headers=alice)
    assert response.status_code == 400 and "nothing else" in response.json()["message"]
    response = httpx.post(url, json={"recipe": changed(model={"name": "Evil", "args": {}}), "sites": SITES}, headers=alice)
    assert response.status_code == 400 and "not on the allow-list" in response.json()["message"]
    response = httpx.post(url, json={"recipe": RECIPE, "sites": ["site-z"]}, headers=alice)
    assert response.status_code == 400 and "site-a, site-b, site-c" in response.json()["message"]
    bob = {"Authorization": f"token {user_token(hub, 'bob')}"}  # a student: not in radiology-research
    assert httpx.post(url, json={"recipe": RECIPE, "sites": SITES}, headers=bob).status_code == 403
    with pytest.raises(TrainError, match=r"refused: site-a: site site-a has not approved recipe 'spheres' \(sha256:"):
        federated_fit(changed(epochs=2), sites=SITES, rounds=1, progress=False, hub=hub.url, token=alice["Authorization"][6:])
    # another user sees none of alice's runs, by list or by id (the run's owner is the token's, not a value sent)
    mine = httpx.get(url, headers=alice).json()["runs"]
    assert mine and all(r["requester"] == "alice" for r in mine)
    assert httpx.get(url, headers=bob).json()["runs"] == []
    assert httpx.get(f"{url}/{mine[0]['id']}", headers=bob).status_code == 404


def test_transfer_learning_at_a_site_sends_back_only_metrics(hub, federation):
    from medlib import versions
    from medlib.train import federated_fit

    token = user_token(hub, "alice")
    base = versions.versions(hub.models)[0]
    recipe = changed(name="spheres-tuned", fine_tune=["model.2"], epochs=2)
    run = federated_fit(recipe, sites=["site-b"], mode="transfer", start=base, signature=sign(parse(recipe), SIGNER),
                        progress=False, hub=hub.url, token=token)
    metrics = run.history[0]["metrics"]["site-b"]
    assert set(metrics) == {"loss", "dice_before", "dice_after", "held_out"} and metrics["held_out"] >= 1
    kept = federation.root / "hospitals" / "site-b" / "models" / "spheres-tuned" / f"{run.id}.safetensors"
    assert json.loads(weights.load(kept)[1]["provenance"])["kind"] == "fine-tuned"
    received = list((Path(hub.settings.hub.state_dir) / "federated" / "work" / run.id).rglob("received/*"))
    assert received and not [p for p in received if p.suffix in (".npy", ".npz")]  # no weights left the site


def test_a_site_uploads_its_update_once_per_round_and_only_masked(federation, tmp_path):
    tasks = [["train", {"round": 0, "weights": "$weights", "$recipe": RECIPE}],
             ["aggregate", {"round": 0, "publics": "$publics"}],
             ["aggregate", {"round": 0, "publics": "$publics"}],  # again: two masked copies would unmask it
             ["aggregate", {"round": 0, "publics": {}}]]
    replies = attack(federation, tmp_path, RECIPE, tasks)
    by = {(r["task"], r["site"], i // len(SITES)): r for i, r in enumerate(replies)}
    for site in SITES:
        assert by[("train", site, 0)]["rc"] == "OK" and set(by[("train", site, 0)]["sent"]) == \
            {"round", "samples", "metrics", "public"}
        assert by[("aggregate", site, 1)]["rc"] == "OK" and set(by[("aggregate", site, 1)]["sent"]) == {"round", "masked"}
        assert "already uploaded once" in by[("aggregate", site, 2)]["refused"]
        assert by[("aggregate", site, 3)]["rc"] == "BAD_TASK_DATA"


def test_masks_cancel_in_the_sum_and_hide_each_update():
    from medlib.train import secure

    updates = {s: np.random.default_rng(i).normal(size=1000) for i, s in enumerate(SITES)}
    keys = {s: secure.new_keys() for s in SITES}
    publics = {s: public for s, (_, public) in keys.items()}
    masked = {s: secure.mask(secure.encode(u), s, keys[s][0], publics, "run|0") for s, u in updates.items()}
    total = secure.decode(np.sum(np.stack(list(masked.values())), axis=0, dtype=np.uint64))
    np.testing.assert_allclose(total, sum(updates.values()), atol=1e-5)
    alone = secure.decode(masked["site-a"])
    assert abs(np.corrcoef(alone, updates["site-a"])[0, 1]) < 0.1  # one masked update says nothing of its own


def test_a_site_that_requires_privacy_gets_it_and_epsilon_adds_up_over_rounds(federation, tmp_path):
    policy = federation.kit("site-c") / "local" / "medlib-policy.toml"
    before = policy.read_text()
    policy.write_text(before.replace("max_epochs = 3\n", "max_epochs = 3\nrequire_privacy = true\nmin_noise_multiplier = 0.8\n"))
    try:
        replies = attack(federation, tmp_path / "plain", RECIPE, [["train", {"round": 0, "weights": {}}]])
        refused = {r["site"]: r["refused"] for r in replies}
        assert "requires differential privacy with a noise multiplier of at least 0.8" in refused["site-c"]
        assert "weights do not fit" in refused["site-a"]  # approved there: refused only for the empty weights
        private = parse(changed(name="spheres-dp", privacy={"noise_multiplier": 1.0, "max_grad_norm": 1.0,
                                                            "delta": 1e-5}))
        folder = write_job(tmp_path / "job", run="run-dp", recipe=private, sites=SITES, rounds=2, round_timeout=120,
                           signature=sign(private, SIGNER))
        job, status = run_job(federation, folder)
        result = json.loads((outputs(federation, job, tmp_path / "out") / "result.json").read_text())
    finally:
        policy.write_text(before)
    assert result["status"] == "completed", result
    first, second = ({s: m["epsilon"] for s, m in r["metrics"].items()} for r in result["history"])
    assert set(first) == set(SITES) and all(0 < first[s] < second[s] for s in SITES)  # accounted over the run
    assert result["provenance"]["epsilon"] == max(second.values())


def test_a_hospital_hardens_its_kit_with_one_command_and_a_bad_policy_changes_nothing(federation, tmp_path):
    import shutil
    import subprocess
    import sys

    kit = tmp_path / "site-x"
    shutil.copytree(federation.kit("site-a"), kit, ignore=shutil.ignore_patterns("*-*-*-*-*", "*.log", "*.txt"))
    bad = tmp_path / "bad.toml"
    bad.write_text('site = "site-x"\nsigners = ["not a key"]\n')
    before = {p.name: p.read_bytes() for p in (kit / "local").iterdir()}
    done = subprocess.run([sys.executable, "-m", "medlib.cli", "federated", "site", str(kit), "--policy", str(bad)],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "signers must be base64 DER Ed25519 public keys" in done.stderr
    assert {p.name: p.read_bytes() for p in (kit / "local").iterdir()} == before
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(RECIPE))
    digest = subprocess.run([sys.executable, "-m", "medlib.cli", "federated", "digest", str(recipe)],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert digest == parse(RECIPE).digest
    authorization = json.loads((kit / "local" / "authorization.json").read_text())["permissions"]
    assert all(rights["byoc"] == rights["shell_commands"] == "none" for rights in authorization.values())
    assert authorization["project_admin"]["submit_job"] == "any"  # the centre still submits jobs
