"""At a hospital: the NVIDIA FLARE executor that runs federated recipes, installed with medlib.

A job from the centre names this class and hands it configuration only: the run's id, the recipe
(JSON), an approver's signature if any, and who asked. Everything else is the site's own: its
policy (``<site workspace>/local/medlib-policy.toml``, :class:`~medlib.train.approval.SitePolicy`),
its data folders, the code that reads them. Before the first task the site decides; a recipe it
has not approved, or one beyond its caps, is refused with the policy's message and nothing is read.

Tasks (the controller is :class:`medlib.train.centre.RecipeRounds`):

``train``      load the global weights, train the recipe locally, keep the update here and answer
               with the sample count, metrics and a one-round public key;
``aggregate``  answer with the update masked pairwise among the round's sites
               (:mod:`medlib.train.secure`); at most once per run and round, so that no two
               uploads of one update exist;
``fine_tune``  transfer learning: train the recipe's ``fine_tune`` layers from the given weights,
               evaluate on the held-out part before and after, keep the model here; answer with
               the metrics (and the weights only where the policy's ``share_fine_tuned`` says so);
``keep``       store the final model with its provenance in the policy's ``models`` folder.

Every task is written to the site's FLARE audit log: recipe digest, requester, dataset, and the
names, sizes and SHA-256 of what was sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.fuel.sec.audit import AuditService

from ..errors import MedlibError
from . import secure, weights
from .approval import Refused, SitePolicy
from .job import REFUSED, TASKS
from .kits import POLICY_FILE
from .recipe import Recipe, build_loss, build_model, build_optimizer, build_transforms

IMAGE_SUFFIXES = (".nii.gz", ".nii")


class SiteData(torch.utils.data.Dataset):
    """A site dataset folder: ``images/<case>.nii.gz`` with ``labels/<case>.nii.gz`` of the same
    name, as dicts of (1, D, H, W) float tensors through the recipe's transforms."""

    def __init__(self, folder: Path, cases: list[str], transforms=None):
        self.folder, self.cases, self.transforms = folder, cases, transforms

    @staticmethod
    def cases_in(folder: Path) -> list[str]:
        """The cases with both an image and a label, by name.

        Raises:
            MedlibError: the folder has none.
        """
        images = folder / "images"
        names = sorted(p.name for p in images.iterdir() if p.name.endswith(IMAGE_SUFFIXES)) if images.is_dir() else []
        cases = [n for n in names if (folder / "labels" / n).is_file()]
        if not cases:
            raise MedlibError(f"{folder} holds no cases: put images/<case>.nii.gz with labels/<case>.nii.gz")
        return cases

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        import nibabel

        sample = {key: torch.from_numpy(np.asarray(nibabel.load(self.folder / sub / self.cases[index]).dataobj,
                                                   dtype=np.float32)[None].copy())
                  for key, sub in (("image", "images"), ("label", "labels"))}
        return self.transforms(sample) if self.transforms is not None else sample


class Pairs(torch.utils.data.Dataset):
    """(image, label) tuples of a :class:`SiteData` (what Opacus' Poisson sampling can batch, even empty)."""

    def __init__(self, data: SiteData):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.data[index]
        return torch.as_tensor(sample["image"]), torch.as_tensor(sample["label"])


def split(cases: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Training and held-out cases: a fixed share of the sorted names, every ``1/fraction``-th."""
    if fraction <= 0 or len(cases) < 2:
        return cases, []
    step = max(2, round(1 / fraction))
    held = cases[step - 1::step] or cases[-1:]
    return [c for c in cases if c not in held], held


def dice(model: torch.nn.Module, data: SiteData) -> float | None:
    """Mean Dice of the thresholded output against the labels over ``data`` (None: no cases)."""
    if len(data) == 0:
        return None
    model.eval()
    scores = []
    with torch.no_grad():
        for sample in data:
            predicted = torch.sigmoid(model(sample["image"][None]))[0] > 0.5
            truth = sample["label"] > 0.5
            total = predicted.sum() + truth.sum()
            scores.append(1.0 if total == 0 else float(2 * (predicted & truth).sum() / total))
    model.train()
    return float(np.mean(scores))


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def described(reply: dict[str, Any]) -> dict[str, Any]:
    """What a reply sends, for the audit log: each entry's size and SHA-256 (arrays by their bytes)."""
    out = {}
    for key, value in reply.items():
        if isinstance(value, np.ndarray):
            out[key] = {"bytes": value.nbytes, "sha256": digest(value.tobytes())}
        elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            raw = b"".join(value[k].tobytes() for k in sorted(value))
            out[key] = {"arrays": len(value), "bytes": len(raw), "sha256": digest(raw)}
        elif isinstance(value, bytes):
            out[key] = {"bytes": len(value), "sha256": digest(value)}
        else:
            out[key] = value
    return out


class RecipeExecutor(Executor):
    """Runs one approved recipe at this site; see the module's description."""

    def __init__(self, run: str, recipe: dict, signature: str = "", requester: str = ""):
        super().__init__()
        self.run_id, self.document, self.requester = str(run), recipe, str(requester)
        self.signature = bytes.fromhex(signature) if signature else None
        self.recipe: Recipe | None = None
        self.refusal: str | None = None
        self.folder: Path | None = None
        self.policy: SitePolicy | None = None
        self.state_file: Path | None = None
        self.site_name = ""
        self._pending: dict[int, tuple[np.ndarray, Any]] = {}
        self._lock = threading.Lock()

    # -- the decision, once per job, before any task -------------------------------------------

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type != EventType.START_RUN:
            return
        workspace = fl_ctx.get_engine().get_workspace()
        self.site_name = fl_ctx.get_identity_name()  # the site's name in the engine (its certificate's)
        policy_path = Path(workspace.get_site_config_dir()) / POLICY_FILE
        canonical = json.dumps(self.document, sort_keys=True, separators=(",", ":")).encode() \
            if isinstance(self.document, dict) else b""
        try:
            if not isinstance(self.document, dict):
                raise Refused("the job carries no recipe object")
            self.policy = SitePolicy.load(policy_path)
            self.recipe, self.folder = self.policy.decide(canonical, self.signature)
        except (Refused, MedlibError) as e:
            self.refusal = str(e)
        if not self.run_id or not self.run_id.replace("-", "").isalnum():
            self.refusal = self.refusal or f"run id {self.run_id!r} is not an id"
        else:  # what the site remembers of the run, beside its workspace (no job can change it)
            self.state_file = Path(workspace.get_root_dir()) / "medlib-runs" / f"{self.run_id}.json"
        self._audit("medlib.decision", {"recipe": self.recipe.digest if self.recipe else digest(canonical),
                                        "decision": "refused" if self.refusal else "approved",
                                        "reason": self.refusal, "dataset": self.recipe.dataset if self.recipe else None})
        if self.refusal:
            self.log_error(fl_ctx, self.refusal)

    # -- tasks ----------------------------------------------------------------------------------

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if self.refusal:
            return self._refuse(task_name, self.refusal)
        if task_name not in TASKS:
            return self._refuse(task_name, f"this site runs only the tasks {', '.join(TASKS)}, not {task_name!r}")
        try:
            round_ = shareable.get("round")
            if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 0:
                raise Refused("the task names no round")
            handler = getattr(self, f"_{task_name}")
            with self._lock:
                reply = handler(round_, shareable, abort_signal)
        except (Refused, weights.WeightsError) as e:
            return self._refuse(task_name, str(e))
        out = Shareable()
        out.update(reply)
        self._audit(f"medlib.{task_name}", {"round": round_, "recipe": self.recipe.digest,
                                             "dataset": self.recipe.dataset, "sent": described(reply)})
        return out

    def _train(self, round_: int, task: Shareable, abort_signal: Signal) -> dict[str, Any]:
        model = self._model(task.get("weights"))
        start = weights.to_arrays(model)
        cases = SiteData.cases_in(self.folder)
        training, held = split(cases, self.recipe.validation)
        began = time.perf_counter()
        loss, samples = self._fit(model, training, round_, abort_signal)
        seconds = time.perf_counter() - began
        after = weights.to_arrays(model)
        names = weights.floating(after)
        update = (weights.flat(after, names) - weights.flat(start, names)) * samples
        private, public = secure.new_keys()
        self._pending = {round_: (update, private)}
        metrics = {"loss": loss, "dice": dice(model, SiteData(self.folder, held, None)), "seconds": seconds}
        epsilon = self._epsilon()
        if epsilon is not None:
            metrics["epsilon"] = epsilon
        self._audit("medlib.read", {"round": round_, "dataset": self.recipe.dataset, "cases": len(cases)})
        return {"round": round_, "samples": samples, "metrics": metrics, "public": public}

    def _aggregate(self, round_: int, task: Shareable, abort_signal: Signal) -> dict[str, Any]:
        state = self._state()
        if round_ in state["uploaded"]:
            raise Refused(f"round {round_} of run {self.run_id} was already uploaded once: a site uploads an "
                          "update at most once, so that two masked copies never exist")
        if round_ not in self._pending:
            raise Refused(f"this site trained no update for round {round_}")
        publics = task.get("publics")
        me = self.site_name
        if not isinstance(publics, dict) or me not in publics or len(publics) < 2 or \
                not all(isinstance(k, str) and isinstance(v, bytes) and len(v) == 32 for k, v in publics.items()):
            raise Refused("an upload needs the round's public keys, this site's and at least one other's")
        update, private = self._pending.pop(round_)
        masked = secure.mask(secure.encode(update), me, private, publics, f"{self.run_id}|{round_}")
        state["uploaded"].append(round_)
        self._save_state(state)
        return {"round": round_, "masked": masked}

    def _fine_tune(self, round_: int, task: Shareable, abort_signal: Signal) -> dict[str, Any]:
        if not self.recipe.fine_tune:
            raise Refused("a fine_tune task needs a recipe that names the layers to fine-tune (fine_tune)")
        model = self._model(task.get("weights"))
        training, held = split(SiteData.cases_in(self.folder), self.recipe.validation)
        evaluation = SiteData(self.folder, held, None)
        before = dice(model, evaluation)
        loss, samples = self._fit(model, training, round_, abort_signal)
        metrics = {"loss": loss, "dice_before": before, "dice_after": dice(model, evaluation),
                   "held_out": len(held)}
        epsilon = self._epsilon()
        if epsilon is not None:
            metrics["epsilon"] = epsilon
        arrays = weights.to_arrays(model)
        kept = self._keep_model(arrays, {"kind": "fine-tuned", "run": self.run_id, "recipe": self.recipe.digest,
                                         "site": self.site_name, "metrics": metrics})
        reply: dict[str, Any] = {"round": round_, "samples": samples, "metrics": metrics, "kept": kept}
        if self.policy.share_fine_tuned:
            reply["weights"] = arrays
        return reply

    def _keep(self, round_: int, task: Shareable, abort_signal: Signal) -> dict[str, Any]:
        model = self._model(task.get("weights"))
        provenance = task.get("provenance")
        if not isinstance(provenance, dict):
            raise Refused("a keep task carries the model's provenance")
        return {"round": round_, "kept": self._keep_model(weights.to_arrays(model), {**provenance, "site": self.site_name})}

    # -- helpers --------------------------------------------------------------------------------

    def _model(self, arrays: object) -> torch.nn.Module:
        torch.manual_seed(0)
        model = build_model(self.recipe)
        weights.load_into(model, weights.checked(arrays, weights.to_arrays(model)))
        return model

    def _fit(self, model: torch.nn.Module, cases: list[str], round_: int, abort_signal: Signal) -> tuple[float, int]:
        """Train ``model`` in place for the recipe's local epochs; (mean loss, samples)."""
        seed = int.from_bytes(hashlib.sha256(f"{self.run_id}|{round_}|{self.site_name}".encode()).digest()[:4], "big")
        torch.manual_seed(seed)
        random.seed(seed)
        data = SiteData(self.folder, cases, build_transforms(self.recipe))
        loader = torch.utils.data.DataLoader(Pairs(data), batch_size=self.recipe.batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(seed))
        optimizer, trained, engine = build_optimizer(self.recipe, model), model, None
        if self.recipe.privacy is not None:
            from opacus import PrivacyEngine

            engine = PrivacyEngine(accountant="rdp")
            trained, optimizer, loader = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader,
                noise_multiplier=self.recipe.privacy.noise_multiplier, max_grad_norm=self.recipe.privacy.max_grad_norm)
        loss_fn = build_loss(self.recipe)
        total, seen = 0.0, 0
        for _ in range(self.recipe.epochs):
            for images, labels in loader:
                if abort_signal.triggered:
                    raise Refused("the job was aborted")
                if len(images) == 0:  # Poisson sampling (DP) may draw an empty batch
                    continue
                optimizer.zero_grad()
                loss = loss_fn(trained(images), labels)
                loss.backward()
                optimizer.step()
                total += float(loss) * len(images)
                seen += len(images)
        if engine is not None:
            state = self._state()
            state["dp_history"].extend([list(h) for h in engine.accountant.history])
            self._save_state(state)
        return total / max(seen, 1), len(data)

    def _epsilon(self) -> float | None:
        """ε spent at this site over the whole run so far (RDP accountant, at the recipe's δ)."""
        if self.recipe.privacy is None:
            return None
        from opacus.accountants import RDPAccountant

        accountant = RDPAccountant()
        accountant.history = [tuple(h) for h in self._state()["dp_history"]]
        return float(accountant.get_epsilon(self.recipe.privacy.delta)) if accountant.history else 0.0

    def _state(self) -> dict[str, Any]:
        """What this site remembers of the run across jobs: rounds uploaded, DP steps taken."""
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {"uploaded": [], "dp_history": []}

    def _save_state(self, state: dict[str, Any]) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_file)

    def _keep_model(self, arrays: dict[str, np.ndarray], provenance: dict[str, Any]) -> str | None:
        """Store the model in the policy's models folder; the SHA-256 of the file (its path stays here)."""
        if self.policy.models is None:
            return None
        path = self.policy.models / self.recipe.name / f"{self.run_id}.safetensors"
        weights.save(path, arrays, {"provenance": provenance, "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                    time.gmtime())})
        return digest(path.read_bytes())

    def _refuse(self, task_name: str, message: str) -> Shareable:
        self._audit("medlib.refused", {"task": task_name, "reason": message,
                                       "recipe": self.recipe.digest if self.recipe else None})
        return make_reply(ReturnCode.BAD_TASK_DATA, headers={REFUSED: message})

    def _audit(self, action: str, what: dict[str, Any]) -> None:
        AuditService.add_event(user=self.requester or "unknown", action=action, ref=self.run_id,
                               msg=json.dumps(what, sort_keys=True, default=str))
