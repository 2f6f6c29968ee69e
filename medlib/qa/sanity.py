"""Sanity checks of saliency maps: does an explanation depend on the model and on the data?

Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018), showed that some maps look
the same for a trained and for a random model: they show the image, not the model. Two tests:

- **model-parameter randomisation** (cascading): the model's layers are re-initialised from the
  output backwards, in ``stages``, and the maps made again after each; a map that depends on the
  model changes as its learned weights go.
- **data randomisation**: the maps of a model of the same architecture trained on randomly
  permuted labels (``trainer``, which the user gives: training is theirs); a map that depends on
  what the model learned from the data differs from the trained model's.

Similarity is the Spearman rank correlation of the maps' absolute values (as in the paper) and
the structural similarity (SSIM) of the maps scaled to 0-1 (scikit-image). A method passes a test
when its similarity is below ``max_similarity`` after full randomisation.

    result = qa.sanity_checks(model, x, task="segmentation", trainer=train_on_permuted_labels)
    result.passed          # {"gradcam": True, "integrated_gradients": True, ...}
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .cases import weights_sha256
from .errors import QaError
from .report import Report, figure, svg, table
from .saliency import METHODS, TITLES, Explanation, explain

#: A method of one's own: ``method(model, x) -> map`` on the input's grid.
Method = Callable[[torch.nn.Module, torch.Tensor], np.ndarray]


def similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Spearman's rank correlation of ``|a|`` and ``|b|``, and the SSIM of them scaled to 0-1."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    a, b = np.abs(np.asarray(a, np.float64)), np.abs(np.asarray(b, np.float64))
    rho = spearmanr(a.ravel(), b.ravel()).statistic if a.std() and b.std() else math.nan

    def unit(v: np.ndarray) -> np.ndarray:
        span = v.max() - v.min()
        return (v - v.min()) / span if span else np.zeros_like(v)

    window = min(7, *(s if s % 2 else s - 1 for s in a.shape))
    ssim = structural_similarity(unit(a), unit(b), data_range=1.0, win_size=window) if window >= 3 else math.nan
    return {"spearman": float(rho), "ssim": float(ssim)}


def layers(model: torch.nn.Module) -> list[str]:
    """The modules that hold parameters of their own, in the order they are defined."""
    return [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


def randomised(model: torch.nn.Module, names: Sequence[str], seed: int) -> torch.nn.Module:
    """A copy of ``model`` whose modules ``names`` are re-initialised (their ``reset_parameters``,
    or a normal draw of the parameters' own spread where there is none)."""
    copied = copy.deepcopy(model)
    modules = dict(copied.named_modules())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in names:
            m = modules[name]
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            else:
                for p in m.parameters(recurse=False):
                    p.normal_(0.0, float(p.std()) if p.numel() > 1 and p.std() > 0 else 0.1)
    return copied


class SanityReport(Report):
    """The randomisation tests of each method: ``cascade`` (similarity per stage), ``data``, ``passed``."""

    kind = "sanity"
    title = "Sanity checks of the saliency maps"

    def __init__(self, document: dict[str, Any], maps: dict[str, dict[str, np.ndarray]]):
        super().__init__(document)
        self.maps = maps  # "trained", "randomised", "data" -> method -> map

    @property
    def passed(self) -> dict[str, bool]:
        return self.document["passed"]

    def audit_object(self) -> dict[str, Any]:
        return {"model_sha256": self.document["model"]["weights_sha256"],
                "passed": sum(self.passed.values()), "methods": len(self.passed)}

    def sections(self):
        d = self.document
        rows = [{"method": TITLES.get(m, m), "model randomisation": _pair(d["cascade"][m][-1]["similarity"]),
                 "data randomisation": _pair(d["data"][m]) if d["data"] else "not run (no trainer)",
                 "passes": "yes" if d["passed"][m] else "NO"} for m in d["methods"]]
        yield (f"<p>Similarity of each method's map after full randomisation to the trained model's (Spearman of "
               f"|map|, SSIM); a map that depends on the model and the data scores below {d['max_similarity']}.</p>")
        yield table(rows, ("method", "model randomisation", "data randomisation", "passes"))
        yield "<h2>Cascading randomisation</h2>" + "".join(f"<figure>{s}</figure>" for s in self._plots())

    def _plots(self) -> list[str]:
        d = self.document
        fig, ax = figure(5, 3.4)
        for method in d["methods"]:
            stages = d["cascade"][method]
            ax.plot([s["randomised_layers"] for s in stages], [s["similarity"]["spearman"] for s in stages], marker="o",
                    label=TITLES.get(method, method))
        ax.axhline(d["max_similarity"], color="#999", ls="--", lw=1)
        ax.set(xlabel="layers randomised (from the output)", ylabel="Spearman |map| vs trained", ylim=(-0.2, 1.05))
        ax.legend(fontsize=7)
        out = [svg(fig)]
        rows = [k for k in ("trained", "randomised", "data") if self.maps.get(k)]
        fig = figure(2.1 * len(d["methods"]), 2.0 * len(rows))[0]
        fig.clear()
        axes = fig.subplots(len(rows), len(d["methods"]), squeeze=False, gridspec_kw={"hspace": 0.5})
        for r, row in enumerate(rows):
            for c, method in enumerate(d["methods"]):
                values = np.abs(self.maps[row][method])
                axes[r][c].imshow(values[values.shape[0] // 2] if values.ndim == 3 else values, cmap="inferno")
                axes[r][c].set_xticks([]), axes[r][c].set_yticks([])
                axes[r][c].set_title(f"{TITLES.get(method, method)}\n{row}", fontsize=7)
        out.append(svg(fig))
        return out


def _pair(s: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" if v is not None and math.isfinite(v) else f"{k} –" for k, v in s.items())


def sanity_checks(model: torch.nn.Module, x: Any, *, task: str, methods: Sequence[str | tuple[str, Method]] = METHODS,
                  trainer: Callable[[], torch.nn.Module] | None = None, stages: int = 4, max_similarity: float = 0.5,
                  seed: int = 0, save: bool = True, folder: Any = None, progress: bool = True,
                  **options: Any) -> SanityReport:
    """Run the model-parameter randomisation test (and, with ``trainer``, the data randomisation
    test) on the maps of ``methods`` for input ``x`` (1, C, *spatial); ``options`` go to
    :func:`~medlib.qa.saliency.explain` (the same region, layer, occlusion box and steps for every
    model). A method may be ``(name, function(model, x) -> map)``. The report is saved and audited
    unless ``save`` is False.

    Raises:
        QaError: a model without parameters, or ``stages`` below 1.
    """
    named = [m if isinstance(m, tuple) else (m, None) for m in methods]
    names = [n for n, _ in named]
    parameterised = layers(model)
    if not parameterised or stages < 1:
        raise QaError("the model has no parameters to randomise" if not parameterised else "stages must be at least 1")
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
    trained = explain(model, x, task=task, methods=[n for n, f in named if f is None], **options) \
        if any(f is None for _, f in named) else None
    # every model's maps explain the same number: the trained model's region and positive class
    options = {**options, "positive": trained.settings["positive"] if trained else options.get("positive")}
    if task == "segmentation" and options.get("region") is None and trained is not None:
        options["region"] = trained.region
    if trained is not None and "layer" in trained.settings:
        options["layer"] = trained.settings["layer"]

    def maps_of(m: torch.nn.Module, base: Explanation | None = None) -> dict[str, np.ndarray]:
        made = base.maps if base is not None else \
            (explain(m, x, task=task, methods=[n for n, f in named if f is None], **options).maps
             if any(f is None for _, f in named) else {})
        for name, function in named:
            if function is not None:
                made[name] = np.asarray(function(m, x), np.float32)
        return made

    from tqdm.auto import tqdm

    original = maps_of(model, trained)
    counts = sorted({max(1, round(len(parameterised) * k / stages)) for k in range(1, stages + 1)})
    cascade: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    last: dict[str, np.ndarray] = {}
    options.setdefault("progress", False)  # one bar for the stages rather than one per map
    for k, count in enumerate(tqdm(counts, desc="randomising layers", unit="stage", disable=not progress)):
        last = maps_of(randomised(model, parameterised[-count:], seed + k))
        for n in names:
            cascade[n].append({"randomised_layers": count, "down_to": parameterised[-count],
                               "similarity": similarity(original[n], last[n])})
    data: dict[str, dict[str, float]] = {}
    permuted: dict[str, np.ndarray] = {}
    if trainer is not None:
        other = trainer()
        if [tuple(p.shape) for p in other.parameters()] != [tuple(p.shape) for p in model.parameters()]:
            raise QaError("the trainer's model is not of the model's architecture: train the same architecture on "
                          "permuted labels")
        permuted = maps_of(other.to(next(model.parameters()).device))
        data = {n: similarity(original[n], permuted[n]) for n in names}
    passed = {n: bool(cascade[n][-1]["similarity"]["spearman"] < max_similarity and
                      (not data or data[n]["spearman"] < max_similarity)) for n in names}
    document = {"methods": names, "task": task, "max_similarity": max_similarity, "seed": seed, "stages": counts,
                "model": {"name": type(model).__name__, "weights_sha256": weights_sha256(model),
                          "layers": len(parameterised)},
                "options": {k: v for k, v in options.items() if isinstance(v, (str, int, float, list, tuple))},
                "cascade": cascade, "data": data, "passed": passed}
    report = SanityReport(document, {"trained": original, "randomised": last, "data": permuted})
    if save:
        report.save(folder)
    return report
