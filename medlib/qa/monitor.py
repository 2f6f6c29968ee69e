"""Drift monitoring: a reference profile of a dataset version, and each new batch compared with it.

    reference = qa.profile(model, "lung-ct-2024", version="v000001", task="segmentation", transform=prep)
    reference.save("qa/reference.json")
    report = qa.drift(qa.Profile.load("qa/reference.json"), "lung-ct-2024", model=model, transform=prep)
    report.raise_for_drift()        # in a scheduled batch job: the job fails when the inputs drifted

A profile holds, per case: the acquisition parameters (:data:`~medlib.qa.series.ACQUISITION`),
the image's intensity statistics and noise, and with a model its outputs and the embedding of one
layer (its output averaged over space; default the coarsest convolution). Each variable is
compared by a test suited to it, all from scipy: Kolmogorov-Smirnov for scalars (with the
population stability index as the size of a shift), a permutation test of the chi-square
statistic for categories, and a permutation test of the maximum mean discrepancy (Gaussian
kernel, median bandwidth) for embeddings. The p-values are adjusted together by
Benjamini-Hochberg; a variable drifted when its adjusted p-value is at most ``alpha``.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets.series import Series
from ..errors import MedlibError
from .cases import Cases, Transform, cases as make_cases, coarsest_layer, identity, run, volume, weights_sha256
from .errors import QaError
from .report import Report, figure, svg, table
from .series import screen

FORMAT = 1
#: The image statistics of each case (on the volume as stored, e.g. HU).
IMAGE_STATISTICS = ("mean", "std", "p01", "p99", "noise")


class DriftDetected(MedlibError):
    """A batch drifted from the reference: the message names the variables."""


def noise(values: np.ndarray) -> float:
    """The noise's standard deviation, by Immerkær's Laplacian difference mask (1996), which
    cancels smooth structure, made robust to edges by the median: white noise σ gives the filtered
    values a normal law of σ × 6, whose median absolute value is 0.6745 of that. Median over slices."""
    from scipy.ndimage import convolve

    if values.shape[-1] < 3 or values.shape[-2] < 3:
        return math.nan
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)[None]
    filtered = np.abs(convolve(values.astype(np.float32), mask, mode="nearest")[:, 1:-1, 1:-1])
    per_slice = np.median(filtered.reshape(len(filtered), -1), axis=1) / (6 * 0.6745)
    return float(np.median(per_slice))


def image_statistics(values: np.ndarray) -> dict[str, float]:
    p01, p99 = np.percentile(values, (1, 99))
    return {"mean": float(values.mean()), "std": float(values.std()), "p01": float(p01), "p99": float(p99),
            "noise": noise(values)}


@dataclass
class Profile:
    """Per-case variables of a set of cases: ``scalars`` and ``categories`` by name (one value per
    case, NaN or None when a case lacks it), ``embeddings`` (cases × features) by layer, and the
    model they were made with."""

    cases: list[str]
    scalars: dict[str, list[float]] = field(default_factory=dict)
    categories: dict[str, list[str | None]] = field(default_factory=dict)
    embeddings: dict[str, list[list[float]]] = field(default_factory=dict)
    model: dict[str, Any] | None = None  # weights_sha256, name, task, layer
    data: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile as JSON (atomically)."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"format": FORMAT, **self.__dict__}, allow_nan=True))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        try:
            data = json.loads(Path(path).expanduser().read_text())
        except (OSError, ValueError) as e:
            raise QaError(f"{path} is not a readable profile ({e}); make one with qa.profile(...).save(path)") from None
        if data.pop("format", None) != FORMAT:
            raise QaError(f"{path} is not a medlib.qa profile of format {FORMAT}; make it again with qa.profile")
        return cls(**data)

    def acquisition_ranges(self) -> tuple[dict[str, tuple[float, float]], dict[str, set[str]]]:
        """The acquisition parameters' ranges and categories in these cases (for
        :func:`~medlib.qa.series.check_series`'s ``reference``)."""
        scalars = {}
        for name, values in self.scalars.items():
            finite = [v for v in values if v is not None and math.isfinite(v)]
            if name.startswith("acquisition:") and finite:
                scalars[name.split(":", 1)[1]] = (min(finite), max(finite))
        categories = {name.split(":", 1)[1]: {v for v in values if v is not None}
                      for name, values in self.categories.items() if name.startswith("acquisition:")}
        return scalars, {k: v for k, v in categories.items() if v}


def profile(model: torch.nn.Module | None, data: str | os.PathLike[str] | Sequence[Series] | Cases, *,
            version: str | None = None, select: Sequence[str] | None = None, task: str | None = None,
            transform: Transform = identity, layer: str | None = "auto", positive: int | None = None,
            check: bool = True, batch_size: int = 4, device: str | torch.device | None = None,
            progress: bool = True) -> Profile:
    """The profile of ``data`` (a granted dataset at ``version``, a folder, or series; ``select``:
    only these Series Instance UIDs of it): with ``model`` (and its ``task``, ``transform``), also
    its outputs and the embedding of ``layer`` (``auto``: the coarsest convolution; None: no
    embedding). With ``check``, series that fail the input checks (:mod:`.series`) are left out
    and named in ``data["excluded"]``."""
    from tqdm.auto import tqdm

    found = make_cases(data, version, select, purpose="qa-drift")
    keep, excluded, by_uid = screen(found.series, check=check)
    if not keep:
        raise QaError(f"every one of the {len(found)} case(s) failed the input checks (first: "
                      f"{next(iter(excluded.values()))[0]}); fix the data or pass check=False")
    found = Cases(keep, {**found.source, **({"excluded": excluded} if excluded else {})})
    out = Profile(cases=[s.uid for s in keep], data=found.source)
    acquisitions = [by_uid[s.uid] for s in keep]
    for name in sorted({k for a in acquisitions for k in a}):
        values = [a.get(name) for a in acquisitions]
        if any(isinstance(v, str) for v in values):
            out.categories[f"acquisition:{name}"] = [None if v is None else str(v) for v in values]
        else:
            out.scalars[f"acquisition:{name}"] = [math.nan if v is None else float(v) for v in values]
    statistics: list[dict[str, float]] = []
    if model is None:
        for series in tqdm(found.series, desc="profiling", unit="case", disable=not progress):
            statistics.append(image_statistics(volume(series)))
    else:
        if task is None:
            raise QaError("say what the model does: task='classification' or task='segmentation'")
        if layer == "auto":
            first = found.series[0]
            example = torch.as_tensor(np.ascontiguousarray(transform(volume(first), first)), dtype=torch.float32)[None]
            layer = coarsest_layer(model.eval(), example.to(next(model.parameters()).device))
        out.model = {"name": type(model).__name__, "weights_sha256": weights_sha256(model), "task": task,
                     "layer": layer}
        outputs: dict[str, list[float]] = {}
        embedding: list[list[float]] = []
        for result in run(model, found, task=task, transform=transform, batch_size=batch_size, device=device,
                          positive=positive, layer=layer, progress=progress, desc="profiling"):
            statistics.append(image_statistics(result.volume))
            p = np.asarray(result.probability, np.float64)
            values = {"probability": float(p)} if task == "classification" else \
                {"foreground": float((p >= 0.5).mean()), "confidence": float(np.maximum(p, 1 - p).mean())}
            for k, v in values.items():
                outputs.setdefault(f"output:{k}", []).append(v)
            if result.embedding is not None:
                embedding.append([float(v) for v in result.embedding])
        out.scalars.update(outputs)
        if embedding:
            out.embeddings[layer] = embedding
    for name in IMAGE_STATISTICS:
        out.scalars[f"image:{name}"] = [s[name] for s in statistics]
    return out


# -- the tests ---------------------------------------------------------------------------------

def psi(reference: np.ndarray, batch: np.ndarray, bins: int = 10) -> float:
    """The population stability index of ``batch`` against ``reference``'s deciles."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        return 0.0 if np.all(batch == reference[0]) else math.inf
    edges[0], edges[-1] = -np.inf, np.inf
    expected = np.histogram(reference, edges)[0] / len(reference)
    actual = np.histogram(batch, edges)[0] / len(batch)
    expected, actual = np.clip(expected, 1e-4, None), np.clip(actual, 1e-4, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _chi2(codes_a: np.ndarray, codes_b: np.ndarray, axis: int = -1) -> np.ndarray:
    """The chi-square statistic of homogeneity of two samples of category codes (vectorised)."""
    k = int(max(codes_a.max(initial=0), codes_b.max(initial=0))) + 1
    a = (codes_a[..., None] == np.arange(k)).sum(axis=-2).astype(float)
    b = (codes_b[..., None] == np.arange(k)).sum(axis=-2).astype(float)
    total = a + b
    expected_a = total * codes_a.shape[-1] / (codes_a.shape[-1] + codes_b.shape[-1])
    expected_b = total - expected_a
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(total > 0, (a - expected_a) ** 2 / expected_a + (b - expected_b) ** 2 / expected_b, 0.0)
    return terms.sum(axis=-1)


def _mmd_test(reference: np.ndarray, batch: np.ndarray, permutations: int, seed: int) -> tuple[float, float]:
    """(MMD², p) of a permutation test on a Gaussian kernel of median bandwidth."""
    from scipy.spatial.distance import cdist
    from scipy.stats import permutation_test

    pooled = np.concatenate([reference, batch])
    scale = pooled.std(axis=0)
    pooled = pooled / np.where(scale > 0, scale, 1.0)
    distances = cdist(pooled, pooled, "sqeuclidean")
    bandwidth = np.median(distances[np.triu_indices(len(pooled), 1)]) or 1.0
    kernel = np.exp(-distances / bandwidth)

    def mmd(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        kxx = kernel[x[..., :, None], x[..., None, :]].mean(axis=(-1, -2))
        kyy = kernel[y[..., :, None], y[..., None, :]].mean(axis=(-1, -2))
        kxy = kernel[x[..., :, None], y[..., None, :]].mean(axis=(-1, -2))
        return kxx + kyy - 2 * kxy

    n = len(reference)
    result = permutation_test((np.arange(n), np.arange(n, len(pooled))), mmd, permutation_type="independent",
                              vectorized=True, n_resamples=permutations, alternative="greater", batch=100,
                              random_state=np.random.default_rng(seed))
    return float(result.statistic), float(result.pvalue)


@dataclass
class _Test:
    variable: str
    kind: str  # scalar, category, embedding
    test: str
    statistic: float
    p: float
    effect: dict[str, float]
    n: tuple[int, int]


def _scalar(name: str, a: np.ndarray, b: np.ndarray) -> _Test | str:
    from scipy.stats import ks_2samp

    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return f"{name}: fewer than two values in the reference ({len(a)}) or the batch ({len(b)})"
    result = ks_2samp(a, b)
    spread = float(a.std()) or 1.0
    return _Test(name, "scalar", "Kolmogorov-Smirnov", float(result.statistic), float(result.pvalue),
                 {"psi": psi(a, b), "mean_shift_sd": float((b.mean() - a.mean()) / spread),
                  "reference_mean": float(a.mean()), "batch_mean": float(b.mean())}, (len(a), len(b)))


def _category(name: str, a: list, b: list, permutations: int, seed: int) -> _Test | str:
    from scipy.stats import permutation_test

    a, b = [v for v in a if v is not None], [v for v in b if v is not None]
    if len(a) < 2 or len(b) < 2:
        return f"{name}: fewer than two values in the reference ({len(a)}) or the batch ({len(b)})"
    levels = sorted(set(a) | set(b))
    code = {v: i for i, v in enumerate(levels)}
    ca, cb = np.array([code[v] for v in a]), np.array([code[v] for v in b])
    if len(levels) == 1:
        statistic, p = 0.0, 1.0
    else:
        result = permutation_test((ca, cb), _chi2, permutation_type="independent", vectorized=True,
                                  n_resamples=permutations, alternative="greater",
                                  random_state=np.random.default_rng(seed))
        statistic, p = float(result.statistic), float(result.pvalue)
    new = sorted(set(b) - set(a))
    return _Test(name, "category", "chi-square, permutation", statistic, p,
                 {"new_values": len(new), **({"first_new": new[0]} if new else {})}, (len(a), len(b)))


def compare(reference: Profile, batch: Profile, *, alpha: float = 0.05, permutations: int = 1000,
            seed: int = 0) -> DriftReport:
    """Compare ``batch`` with ``reference``, variable by variable (see the module).

    Raises:
        QaError: profiles made with different models.
    """
    from scipy.stats import false_discovery_control

    if reference.model and batch.model and reference.model["weights_sha256"] != batch.model["weights_sha256"]:
        raise QaError(f"the reference profile was made with another model (weights SHA-256 "
                      f"{reference.model['weights_sha256'][:12]}…, this one {batch.model['weights_sha256'][:12]}…): "
                      "make a reference with this model (qa.profile(model, reference_data, ...))")
    tests: list[_Test] = []
    skipped: list[str] = []
    for name in sorted(set(reference.scalars) & set(batch.scalars)):
        found = _scalar(name, np.asarray(reference.scalars[name], float), np.asarray(batch.scalars[name], float))
        (tests if isinstance(found, _Test) else skipped).append(found)
    for name in sorted(set(reference.categories) & set(batch.categories)):
        found = _category(name, reference.categories[name], batch.categories[name], permutations, seed)
        (tests if isinstance(found, _Test) else skipped).append(found)
    for layer in sorted(set(reference.embeddings) & set(batch.embeddings)):
        a, b = np.asarray(reference.embeddings[layer]), np.asarray(batch.embeddings[layer])
        if len(a) < 2 or len(b) < 2:
            skipped.append(f"embedding:{layer}: fewer than two cases in the reference ({len(a)}) or the batch ({len(b)})")
            continue
        statistic, p = _mmd_test(a, b, permutations, seed)
        tests.append(_Test(f"embedding:{layer}", "embedding", "maximum mean discrepancy, permutation", statistic, p,
                           {"features": a.shape[1]}, (len(a), len(b))))
    def variables(p: Profile) -> set[str]:
        return set(p.scalars) | set(p.categories) | {f"embedding:{k}" for k in p.embeddings}

    missing = sorted(variables(reference) - variables(batch))
    adjusted = false_discovery_control([t.p for t in tests], method="bh") if tests else []
    rows = [{"variable": t.variable, "kind": t.kind, "test": t.test, "statistic": t.statistic, "p": t.p,
             "p_adjusted": float(q), "drifted": bool(q <= alpha), "n_reference": t.n[0], "n_batch": t.n[1],
             **{f"effect_{k}": v for k, v in t.effect.items()}} for t, q in zip(tests, adjusted)]
    document = {"alpha": alpha, "permutations": permutations, "seed": seed, "correction": "Benjamini-Hochberg",
                "reference": {"data": reference.data, "cases": len(reference.cases), "model": reference.model},
                "batch": {"data": batch.data, "cases": len(batch.cases), "model": batch.model},
                "tests": rows, "drifted": [r["variable"] for r in rows if r["drifted"]],
                "not_tested": skipped + [f"{name}: not in the batch's profile (no model given?)" for name in missing]}
    return DriftReport(document, reference, batch)


def drift(reference: Profile, data: str | os.PathLike[str] | Sequence[Series] | Cases, *, version: str | None = None,
          select: Sequence[str] | None = None, model: torch.nn.Module | None = None, transform: Transform = identity,
          positive: int | None = None, alpha: float = 0.05, permutations: int = 1000, seed: int = 0,
          batch_size: int = 4, device: str | torch.device | None = None, save: bool = True,
          folder: str | os.PathLike[str] | None = None, progress: bool = True) -> DriftReport:
    """Profile ``data`` as ``reference`` was (with ``model`` and ``transform`` if it has model
    variables) and :func:`compare` them; the report is saved (``folder``, default
    ``~/qa-reports/drift-<digest>``) and audited unless ``save`` is False.

    Raises:
        QaError: a model other than the reference's.
    """
    if model is not None and reference.model is None:
        raise QaError("the reference profile was made without a model: give model=None, or make a reference with "
                      "the model (qa.profile(model, ...))")
    if model is not None and reference.model["weights_sha256"] != weights_sha256(model):
        raise QaError(f"the reference profile was made with another model (weights SHA-256 "
                      f"{reference.model['weights_sha256'][:12]}…, this one {weights_sha256(model)[:12]}…): make a "
                      "reference with this model (qa.profile(model, reference_data, ...))")
    task, layer = (reference.model["task"], reference.model.get("layer")) if model is not None else (None, None)
    batch = profile(model, data, version=version, select=select, task=task, transform=transform, layer=layer,
                    positive=positive, batch_size=batch_size, device=device, progress=progress)
    report = compare(reference, batch, alpha=alpha, permutations=permutations, seed=seed)
    if save:
        report.save(folder)
    return report


class DriftReport(Report):
    """The comparison of a batch with a reference: ``tests`` (one per variable), ``drifted``."""

    kind = "drift"
    title = "Drift report"

    def __init__(self, document: dict[str, Any], reference: Profile | None = None, batch: Profile | None = None):
        super().__init__(document)
        self.reference, self.batch = reference, batch

    @property
    def drifted(self) -> list[str]:
        """The variables that drifted (adjusted p-value at most alpha)."""
        return self.document["drifted"]

    @property
    def exit_code(self) -> int:
        """1 when something drifted, else 0 (a scheduled job's exit status)."""
        return 1 if self.drifted else 0

    def raise_for_drift(self) -> None:
        """Raise :class:`DriftDetected` naming the drifted variables (a batch job then fails)."""
        if self.drifted:
            raise DriftDetected(f"{len(self.drifted)} variable(s) drifted from the reference at a false-discovery rate "
                                f"of {self.document['alpha']}: {', '.join(self.drifted)}"
                                + (f"; report: {self.folder}" if self.folder else ""))

    def audit_object(self) -> dict[str, Any]:
        data = self.document["batch"]["data"]
        return {k: data[k] for k in ("dataset", "version", "folder", "manifest_sha256") if data.get(k)} | \
            {"drifted": len(self.drifted)}

    def sections(self):
        d = self.document
        verdict = "<p class=\"ok\">No variable drifted.</p>"
        if d["drifted"]:
            names = html.escape(", ".join(d["drifted"]))
            verdict = f"<p class=\"flag\">Drift in {len(d['drifted'])} variable(s): {names}</p>"
        ref, batch = d["reference"], d["batch"]
        yield (f"{verdict}<p>Reference: {self._name(ref['data'])}, {ref['cases']} case(s); batch: "
               f"{self._name(batch['data'])}, {batch['cases']} case(s). Benjamini-Hochberg at {d['alpha']}, "
               f"{d['permutations']} permutations (seed {d['seed']}).</p>")
        yield "<h2>Tests</h2>" + table(
            [{**r, "drifted": "drifted" if r["drifted"] else ""} for r in d["tests"]],
            ("variable", "test", "statistic", "p", "p_adjusted", "effect_psi", "n_reference", "n_batch", "drifted"),
            ("variable", "test", "statistic", "p", "adjusted p", "PSI", "reference", "batch", ""))
        if d["tests"]:
            yield "<h2>Plots</h2>" + "".join(f"<figure>{s}</figure>" for s in self._plots())
        if d["not_tested"]:
            yield "<h2>Not tested</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in d["not_tested"]) + "</ul>"

    @staticmethod
    def _name(data: dict[str, Any]) -> str:
        name = data.get("dataset") or data.get("folder") or "series given"
        return html.escape(f"{name}{'@' + data['version'] if data.get('version') else ''}")

    def _plots(self) -> list[str]:
        d = self.document
        fig, ax = figure(5.5, 0.28 * len(d["tests"]) + 1.2)
        q = [max(r["p_adjusted"], 1e-12) for r in d["tests"]]
        ax.barh(range(len(q)), [-math.log10(v) for v in q], color=["#b42318" if r["drifted"] else "#4c72b0"
                                                                  for r in d["tests"]])
        ax.axvline(-math.log10(d["alpha"]), color="#999", ls="--", lw=1)
        ax.set_yticks(range(len(q)), [r["variable"] for r in d["tests"]], fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel="-log10 adjusted p", title="Variables (dashed: alpha)")
        out = [svg(fig)]
        if self.reference is None or self.batch is None:
            return out
        for row in sorted(d["tests"], key=lambda r: r["p_adjusted"])[:4]:
            name = row["variable"]
            fig, ax = figure()
            if row["kind"] == "scalar":
                a, b = np.asarray(self.reference.scalars[name], float), np.asarray(self.batch.scalars[name], float)
                a, b = a[np.isfinite(a)], b[np.isfinite(b)]
                edges = np.histogram_bin_edges(np.concatenate([a, b]), bins=15)
                ax.hist(a, edges, alpha=0.6, density=True, label="reference")
                ax.hist(b, edges, alpha=0.6, density=True, label="batch")
                ax.legend()
            elif row["kind"] == "category":
                a, b = self.reference.categories[name], self.batch.categories[name]
                levels = sorted({v for v in a + b if v is not None})
                x = np.arange(len(levels))
                ax.bar(x - 0.2, [a.count(v) / len(a) for v in levels], 0.4, label="reference")
                ax.bar(x + 0.2, [b.count(v) / len(b) for v in levels], 0.4, label="batch")
                ax.set_xticks(x, levels, rotation=30, fontsize=7)
                ax.legend()
            else:
                layer = name.split(":", 1)[1]
                a, b = np.asarray(self.reference.embeddings[layer]), np.asarray(self.batch.embeddings[layer])
                centre = a.mean(axis=0)
                _, _, axes = np.linalg.svd(a - centre, full_matrices=False)
                pa, pb = (a - centre) @ axes[:2].T, (b - centre) @ axes[:2].T
                ax.scatter(pa[:, 0], pa[:, 1] if pa.shape[1] > 1 else 0 * pa[:, 0], s=12, label="reference")
                ax.scatter(pb[:, 0], pb[:, 1] if pb.shape[1] > 1 else 0 * pb[:, 0], s=12, label="batch")
                ax.set(xlabel="reference PC 1", ylabel="reference PC 2")
                ax.legend()
            ax.set_title(f"{name} (adjusted p {row['p_adjusted']:.2g})", fontsize=9)
            out.append(svg(fig))
        return out
