"""Explanations: saliency maps of one prediction, shown over the series and saved as DICOM.

    explanation = qa.explain(model, prep(volume, series)[None], task="segmentation", series=series)
    explanation.show()                        # the maps over the series, in the series viewer
    explanation.save_dicom("qa/explained")    # one secondary-capture series per map, in the study

What is explained is one number (:class:`Score`): a classifier's logit of the positive class, or a
segmentation's mean logit over a region (default: where the model predicts the positive class).
Three methods, from the field's libraries: Grad-CAM (MONAI's ``GradCAM``, at a convolution,
default the coarsest), occlusion sensitivity (MONAI's ``OcclusionSensitivity``; the map is the
score's drop when a region is occluded, so larger is more important) and integrated gradients
(Captum's ``IntegratedGradients``, summed over channels). Every map is on the input's grid.
Occluded images and integration steps run ``batch_size`` at a time.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets.series import Series
from .cases import coarsest_layer, device_of, fitted, module, positive_channel, probabilities
from .errors import QaError

#: The methods :func:`explain` offers, by name.
METHODS = ("gradcam", "occlusion", "integrated_gradients")
#: How each method's map is named in a viewer and in DICOM.
TITLES = {"gradcam": "Grad-CAM", "occlusion": "Occlusion sensitivity", "integrated_gradients": "Integrated gradients"}


class Score(torch.nn.Module):
    """The number a saliency map explains, as a model with one output: a classifier's logit of
    ``positive``; a segmentation's mean logit of ``positive`` over ``region`` (a mask on the input's grid)."""

    def __init__(self, model: torch.nn.Module, task: str, positive: int = 0, region: torch.Tensor | None = None):
        super().__init__()
        self.model, self.task, self.positive = model, task, positive
        self.register_buffer("region", None if region is None else region.float()[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.task == "classification":
            return out.reshape(len(out), -1)[:, self.positive:self.positive + 1]
        logits = out[:, self.positive:self.positive + 1]
        if self.region is None:
            return logits.flatten(1).mean(1, keepdim=True)
        return (logits * self.region).flatten(1).sum(1, keepdim=True) / self.region.sum()


def score_of(model: torch.nn.Module, x: torch.Tensor, task: str, positive: int | None = None,
             region: np.ndarray | None = None) -> Score:
    """The :class:`Score` of ``model`` on ``x`` (1, C, *spatial); for a segmentation without a
    ``region``, where the model predicts the positive class (all the input if nowhere).

    Raises:
        QaError: an output that does not fit the task, or a region of another shape.
    """
    try:
        with torch.no_grad():
            output = model(x)
    except RuntimeError as e:
        raise QaError(f"the model cannot run on the input of shape {tuple(x.shape)} ({e}); give one input as the model "
                      "takes it, (1, channels, *spatial): add the batch axis with x[None]") from e
    output = fitted(output, task, tuple(x.shape[2:]))
    positive = positive_channel(output.shape[1], positive)
    mask = None
    if task == "segmentation":
        if region is not None:
            mask = torch.as_tensor(np.asarray(region), device=x.device).bool()
            if tuple(mask.shape) != tuple(x.shape[2:]):
                raise QaError(f"the region's shape {tuple(mask.shape)} is not the input's {tuple(x.shape[2:])}")
        else:
            mask = probabilities(output, task, tuple(x.shape[2:]), positive)[0] >= 0.5
            if not mask.any():
                mask = None
    return Score(model, task, positive, mask).to(x.device).eval()


@dataclass
class Explanation:
    """Saliency ``maps`` (method → (z, y, x) float32 on the input's grid) of ``score`` on one input."""

    maps: dict[str, np.ndarray]
    score: float
    task: str
    region: np.ndarray | None = None  # the voxels a segmentation's score averages over (None: all)
    series: Series | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def region_voxels(self) -> int | None:
        return None if self.region is None else int(self.region.sum())

    def show(self, node: Any = None, **viewer_options: Any):
        """The maps over the series in :class:`~medlib.viewer.SeriesViewer` (a series node of
        ``mds.open``, default the explanation's series)."""
        from ..viewer import SeriesViewer

        if node is None:
            if self.series is None:
                raise QaError("explain(..., series=series) to show the maps over it, or pass show(node)")
            node = self.series.to_xarray()
        return SeriesViewer(node, overlays={TITLES[k]: v for k, v in self.maps.items()}, **viewer_options)

    def save_dicom(self, folder: str | os.PathLike[str], *, methods: Sequence[str] | None = None,
                   window: tuple[float, float] = (400.0, 40.0), manufacturer: str = "medhub medlib.qa") -> list[Path]:
        """Write each map as a DICOM secondary-capture series in the source's study: one RGB image
        per slice (the slice in ``window`` (width, level), the map over it), with the slice's
        position and a Source Image Sequence naming the slice it explains; the files written."""
        from .dicom import write_overlays

        if self.series is None:
            raise QaError("explain(..., series=series): the DICOM maps need the series they explain")
        chosen = {k: self.maps[k] for k in (methods or self.maps)}
        return write_overlays(self.series, chosen, {k: TITLES[k] for k in chosen}, Path(folder), window=window,
                              manufacturer=manufacturer)


def explain(model: torch.nn.Module, x: Any, *, task: str, methods: Sequence[str] = METHODS, positive: int | None = None,
            region: np.ndarray | None = None, layer: str = "auto", mask_size: int | Sequence[int] = 16,
            overlap: float = 0.6, steps: int = 50, baseline: float = 0.0, batch_size: int = 16,
            series: Series | None = None, device: str | torch.device | None = None,
            progress: bool = True) -> Explanation:
    """Saliency maps of ``model``'s prediction on ``x`` (one input as the model takes it: (1, C,
    *spatial)); ``series``: the series it was made of (to show and save the maps over it).

    Args:
        methods: of :data:`METHODS`.
        positive, region: what is explained (see :class:`Score`).
        layer: the convolution of Grad-CAM (a name of ``model.named_modules()``; ``auto``: the coarsest).
        mask_size, overlap: occlusion's box (cut to the input's size) and its windows' overlap.
        steps, baseline: integrated gradients' steps and baseline value.
        batch_size: occluded images and integration steps computed together.
        progress: occlusion's progress bar.

    Raises:
        QaError: an unknown method or layer, an output that does not fit the task.
    """
    from captum.attr import IntegratedGradients
    from monai.visualize import GradCAM, OcclusionSensitivity

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise QaError(f"unknown method(s) {', '.join(unknown)}: choose of {', '.join(METHODS)}")
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
    if x.ndim < 3 or x.shape[0] != 1:
        raise QaError(f"give one input as the model takes it, (1, channels, *spatial); this is {tuple(x.shape)} "
                      "(add the batch axis: x[None])")
    x = x.to(device_of(model, device))
    was_training = model.training
    model.eval()
    try:
        score = score_of(model, x, task, positive, region)
        with torch.no_grad():
            value = float(score(x)[0, 0])
        spatial = tuple(x.shape[2:])
        maps: dict[str, np.ndarray] = {}
        settings: dict[str, Any] = {"positive": score.positive}
        if "gradcam" in methods:
            name = coarsest_layer(model, x) if layer == "auto" else layer
            module(model, name)  # a clear error for a name that is not there
            # as computed (MONAI's default post-processing scales it to 1 at the smallest value)
            cam = GradCAM(nn_module=score, target_layers=f"model.{name}", postprocessing=lambda m: m)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # a full backward hook on an input without gradient
                maps["gradcam"] = cam(x.clone(), class_idx=0)[0, 0].detach().cpu().numpy()
            settings["layer"] = name
        if "occlusion" in methods:
            size = [int(min(s, m)) for s, m in zip(spatial, np.broadcast_to(mask_size, len(spatial)))]
            occlusion = OcclusionSensitivity(score, mask_size=size, n_batch=batch_size, mode="gaussian", overlap=overlap,
                                             activate=False, verbose=progress)
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # MONAI's own list indexing, deprecated by torch
                occluded, _ = occlusion(x)
            maps["occlusion"] = (value - occluded[0, 0]).cpu().numpy()
            settings |= {"mask_size": size, "overlap": overlap}
        if "integrated_gradients" in methods:
            attributions = IntegratedGradients(score).attribute(x, baselines=baseline, target=0, n_steps=steps,
                                                                internal_batch_size=batch_size)
            maps["integrated_gradients"] = attributions[0].sum(0).detach().cpu().numpy()
            settings |= {"steps": steps, "baseline": baseline}
    finally:
        model.train(was_training)
    maps = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in maps.items()}
    region = score.region[0, 0].bool().cpu().numpy() if score.region is not None else None
    return Explanation(maps, value, task, region, series, settings)
