"""The cases a model is evaluated on, and the model run over them in batches.

A case is one image series: of a granted dataset at a version (its manifest's digest and its
site named, the reading audited), of a folder, or given as :class:`~medlib.datasets.series.Series`.
:func:`run` reads the next batch's volumes in threads while the model runs on this one, checks
that the model's output fits the task, and yields each case's probabilities (and, with
``layer``, its embedding: that layer's output averaged over space).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets.series import Series, find_series
from ..manifest import MANIFEST
from .errors import QaError

#: The tasks a model can be evaluated for.
TASKS = ("classification", "segmentation")
#: ``transform(volume, series)``: the model's input (channels, *spatial) from a (z, y, x) volume.
Transform = Callable[[np.ndarray, Series], Any]


def identity(volume: np.ndarray, series: Series) -> np.ndarray:
    """The default transform: the volume as one channel, unchanged."""
    return volume[None]


@dataclass
class Cases:
    """Series to evaluate, in order, and where they come from (what a report's ``data`` names)."""

    series: list[Series]
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.series)


def cases(data: str | os.PathLike[str] | Sequence[Series] | Cases, version: str | None = None,
          select: Sequence[str] | None = None, purpose: str = "qa") -> Cases:
    """The cases of ``data``: a granted dataset's id (at ``version``; audited as ``dataset-open``
    with ``via=purpose``), a folder of DICOM files (a :class:`~pathlib.Path`), or series;
    ``select``: only the series of these Series Instance UIDs (named in the source)."""
    if isinstance(data, Cases):
        return data
    if isinstance(data, str):
        from .. import audit
        from ..datasets.access import locate, series
        from ..versions import PROVENANCE

        located = locate(data, version)
        found = _selected(series(data, version), select, data)
        provenance = located.root / PROVENANCE
        site = json.loads(provenance.read_text()).get("site") if provenance.is_file() else None
        source = {**located.object, "manifest_sha256": _digest(located.manifest), "series": len(found),
                  **({"site": site} if site else {}), **({"selected": list(select)} if select is not None else {})}
        audit.record("dataset-open", {**located.object, "series": len(found)}, via=purpose)
        return Cases(found, source)
    if isinstance(data, os.PathLike):
        folder = Path(data)
        found = _selected(find_series(folder, skip=(MANIFEST,)), select, str(folder))
        manifest = folder / MANIFEST
        return Cases(found, {"folder": str(folder), "series": len(found),
                             **({"manifest_sha256": _digest(manifest)} if manifest.is_file() else {})})
    found = list(data)
    if not all(isinstance(s, Series) for s in found):
        raise QaError("give a dataset id, a folder (a pathlib.Path) or medlib.datasets.series Series")
    return Cases(_selected(found, select, "the series given"), {"series": len(found)})


def _selected(found: list[Series], select: Sequence[str] | None, where: str) -> list[Series]:
    if select is not None:
        by_uid = {s.uid: s for s in found}
        missing = [uid for uid in select if uid not in by_uid]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise QaError(f"{where} has no series {missing[0]}{more}")
        found = [by_uid[uid] for uid in select]
    if not found:
        raise QaError(f"{where} holds no DICOM image series to evaluate")
    return found


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def volume(series: Series) -> np.ndarray:
    """A series' (z, y, x) volume as float32."""
    return series.read().astype(np.float32, copy=False)


def weights_sha256(model: torch.nn.Module) -> str:
    """The SHA-256 of a model's state: every entry's name, type, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        array = value.detach().cpu().contiguous()
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)};".encode())
        digest.update(array.numpy().tobytes() if array.dtype != torch.bfloat16 else array.float().numpy().tobytes())
    return digest.hexdigest()


def device_of(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def fitted(output: torch.Tensor, task: str, spatial: tuple[int, ...]) -> torch.Tensor:
    """A model's output checked against the task: (N, classes) for a classification, (N,
    channels, *spatial) for a segmentation.

    Raises:
        QaError: an output whose shape does not fit the task, with what to do.
    """
    shape = tuple(output.shape)
    if task == "classification":
        if len(shape) > 2:
            raise QaError(f"the model's output {shape} is a map, not one score per case: evaluate it with "
                          "task='segmentation', or give a classifier")
        return output.reshape(shape[0], -1)
    if task == "segmentation":
        if len(shape) != 2 + len(spatial) or shape[2:] != spatial:
            raise QaError(f"the model's output {shape} does not have the input's spatial shape {spatial}: a "
                          "segmentation model gives one value per voxel (resample its output to the input's grid, "
                          "or evaluate it with task='classification')")
        return output
    raise QaError(f"task {task!r} is not one of {', '.join(TASKS)}")


def positive_channel(channels: int, positive: int | None) -> int:
    """The output channel of the positive class: ``positive``, or the last of one or two.

    Raises:
        QaError: more than two classes and none named, or a channel the model does not have.
    """
    if positive is None:
        if channels > 2:
            raise QaError(f"the model gives {channels} classes: name the one to use with positive=<index>")
        positive = channels - 1
    if not 0 <= positive < channels:
        raise QaError(f"positive={positive} is not one of the model's {channels} output channel(s)")
    return positive


def probabilities(output: torch.Tensor, task: str, spatial: tuple[int, ...], positive: int | None = None,
                  activation: str = "auto") -> torch.Tensor:
    """The positive class's probability from a model's output (:func:`fitted`): (N,) for a
    classification, (N, *spatial) for a segmentation. ``activation``: ``auto`` (sigmoid of one
    channel, softmax of several), or ``none`` for a model that gives probabilities."""
    output = fitted(output, task, spatial)
    channels = output.shape[1]
    positive = positive_channel(channels, positive)
    if activation == "none":
        return output[:, positive].float()
    if activation != "auto":
        raise QaError(f"activation {activation!r} is not 'auto' or 'none'")
    if channels == 1:
        return torch.sigmoid(output[:, 0].float())
    return torch.softmax(output.float(), dim=1)[:, positive]


@dataclass
class Result:
    """One case's run: its series, volume, probabilities and (with a layer) embedding."""

    index: int
    series: Series
    volume: np.ndarray
    probability: np.ndarray  # () for a classification, the input's spatial shape for a segmentation
    embedding: np.ndarray | None = None


def run(model: torch.nn.Module, found: Cases, *, task: str, transform: Transform = identity, batch_size: int = 4,
        device: str | torch.device | None = None, positive: int | None = None, activation: str = "auto",
        layer: str | None = None, workers: int = 2, progress: bool = True, desc: str = "evaluating"
        ) -> Iterator[Result]:
    """Run ``model`` over the cases in batches (cases of one input shape together), reading the
    next batch while this one runs; yield each case's :class:`Result`, in order."""
    from tqdm.auto import tqdm

    target = device_of(model, device)
    captured: list[torch.Tensor] = []
    hook = None
    if layer is not None:
        hook = module(model, layer).register_forward_hook(lambda _m, _i, out: captured.append(_pooled(out)))
    was_training = model.training
    model.eval()

    def load(index: int) -> tuple[int, np.ndarray, torch.Tensor]:
        values = volume(found.series[index])
        return index, values, torch.as_tensor(np.ascontiguousarray(transform(values, found.series[index])),
                                              dtype=torch.float32)

    batches = [list(range(i, min(i + batch_size, len(found)))) for i in range(0, len(found), batch_size)]
    bar = tqdm(total=len(found), desc=desc, unit="case", disable=not progress)
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool, torch.inference_mode():
            pending = [pool.submit(load, i) for i in batches[0]] if batches else []
            for k in range(len(batches)):
                loaded = [f.result() for f in pending]
                pending = [pool.submit(load, i) for i in batches[k + 1]] if k + 1 < len(batches) else []
                for group in _same_shape(loaded):
                    inputs = torch.stack([x for _, _, x in group]).to(target)
                    captured.clear()
                    output = model(inputs)
                    probs = probabilities(output, task, tuple(inputs.shape[2:]), positive, activation).cpu().numpy()
                    embeddings = captured[-1].cpu().numpy() if captured else None
                    for n, (index, values, _) in enumerate(group):
                        yield Result(index, found.series[index], values, probs[n],
                                     None if embeddings is None else embeddings[n])
                    bar.update(len(group))
    finally:
        bar.close()
        if hook is not None:
            hook.remove()
        model.train(was_training)


def _same_shape(loaded: list[tuple[int, np.ndarray, torch.Tensor]]) -> list[list[tuple[int, np.ndarray, torch.Tensor]]]:
    groups: list[list] = []
    for item in loaded:
        if groups and groups[-1][0][2].shape == item[2].shape:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _pooled(output: Any) -> torch.Tensor:
    """A layer's output averaged over its spatial axes: (N, channels)."""
    output = output[0] if isinstance(output, (tuple, list)) else output
    return output.detach().float().flatten(2).mean(-1) if output.ndim > 2 else output.detach().float()


def module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The sub-module ``name`` of ``model`` (as ``model.named_modules()`` names them)."""
    modules = dict(model.named_modules())
    if name not in modules:
        convs = [n for n, m in modules.items() if isinstance(m, torch.nn.modules.conv._ConvNd)]
        raise QaError(f"the model has no layer {name!r}; its convolutions are: {', '.join(convs[:12])}"
                      f"{' …' if len(convs) > 12 else ''}")
    return modules[name]


def coarsest_layer(model: torch.nn.Module, example: torch.Tensor) -> str:
    """The convolution whose output has the fewest voxels (the last of those): a classifier's last
    feature map, a UNet's bottleneck. ``example``: an input batch of the model's shape."""
    sizes: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=name: sizes.__setitem__(n, out[0, 0].numel()))
             for name, m in model.named_modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    if not sizes:
        raise QaError("the model has no convolution: name the layer to use with layer=")
    smallest = min(sizes.values())
    return [name for name, size in sizes.items() if size == smallest][-1]
