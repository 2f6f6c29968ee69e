"""Look at a series in a notebook: NiiVue (ipyniivue, WebGL), with a PNG slice viewer as fallback.

    import medlib.datasets as mds
    from medlib.viewer import SeriesViewer
    tree = mds.open("research-ct")
    SeriesViewer(next(iter(tree.children.values())))              # a series node of mds.open
    SeriesViewer(node, overlays={"spheres": mask}, preset="CT bone")  # a mask (z, y, x) over it

:class:`SeriesViewer` shows axial, coronal and sagittal views at the series' geometry (its
DICOM affine becomes the NIfTI affine, so anisotropic voxels keep their aspect ratio), with
orientation labels; window/level by dragging with the right button and by CT presets; the value
(HU for CT) at the crosshair, which a click or the arrow keys move; slices by the mouse wheel;
and overlays (a mask, a segmentation, a saliency map) with an opacity slider each. Where
ipyniivue cannot be imported, :class:`SliceViewer` (windowed PNG slices with a slider) takes its
place and says so.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping
from typing import Any

import ipywidgets as widgets
import numpy as np

from .datasets.series import ras_affine

#: (window width, window level) in HU.
PRESETS = {"CT lung": (1500.0, -600.0), "CT soft tissue": (400.0, 40.0), "CT bone": (1800.0, 400.0)}
#: Colormaps of the overlays, in order.
OVERLAY_COLORMAPS = ("red", "green", "blue", "warm", "winter")


def window(values: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map values to 0-255 by a window (linear, clipped), as radiology viewers do."""
    low = level - width / 2
    return (np.clip((values.astype(np.float32) - low) / width, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def png(gray: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def nifti(values: np.ndarray, affine: np.ndarray) -> bytes:
    """A NIfTI-1 file's bytes for ``values`` (z, y, x) with the LPS ``affine`` of
    :attr:`medlib.datasets.series.Series.affine` (indices (slice, row, column) to mm)."""
    import nibabel

    values = np.asarray(values)
    if values.dtype == np.bool_:
        values = values.astype(np.uint8)
    elif values.dtype == np.float64:
        values = values.astype(np.float32)
    return nibabel.Nifti1Image(np.ascontiguousarray(values.transpose(2, 1, 0)), ras_affine(affine)).to_bytes()


def _series(series: Any) -> tuple[np.ndarray, np.ndarray, dict]:
    """(values (z, y, x), LPS affine, attributes) of a series node of :func:`medlib.datasets.open`."""
    try:
        image, attrs = series["image"], dict(series.attrs)
        affine = np.asarray(attrs["affine"], dtype=float)
    except (KeyError, TypeError, IndexError):
        raise TypeError("SeriesViewer shows a series of medlib.datasets.open (a node of its tree, with an "
                        "'image' and an 'affine' attribute), such as next(iter(mds.open(id).children.values()))") from None
    return np.asarray(image.values), affine, attrs


class SeriesViewer(widgets.VBox):
    """A series in NiiVue (or, where it cannot load, in :class:`SliceViewer`); see the module."""

    def __init__(self, series: Any, overlays: Mapping[str, np.ndarray] | None = None, *,
                 preset: str = "CT soft tissue", height: int = 420, **kwargs):
        values, affine, attrs = _series(series)
        overlays = dict(overlays or {})
        for name, mask in overlays.items():
            if np.shape(mask) != values.shape:
                raise ValueError(f"overlay {name!r} has shape {np.shape(mask)}; it must be the series' {values.shape}")
        self.values, self.affine, self.overlays = values, affine, overlays
        self.unit = "HU" if attrs.get("Modality") == "CT" else ""
        self.status = widgets.HTML()
        self.preset = widgets.ToggleButtons(options=list(PRESETS), value=preset if preset in PRESETS else None,
                                            description="Window", style={"button_width": "auto"})
        try:
            self.view = self._niivue(height)
            self.kind = "niivue"
        except ImportError as e:
            self.kind = "png"
            self.view = SliceViewer(values, attrs.get("spacing", (1.0, 1.0, 1.0)), preset=preset, status=self.status)
            self.preset = self.view.preset
            note = widgets.HTML(f"<p><b>The NiiVue viewer could not load</b> ({html.escape(str(e))}): showing "
                                "single slices instead. Install ipyniivue for axial, coronal and sagittal views.</p>")
            super().__init__([note, self.view], **kwargs)
            return
        self.opacity = {name: widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description=name,
                                                  continuous_update=True) for name in overlays}
        for index, slider in enumerate(self.opacity.values(), start=1):
            slider.observe(lambda change, i=index: self._set_opacity(i, change["new"]), "value")
        self.preset.observe(lambda change: self._set_window(change["new"]), "value")
        help_line = widgets.HTML("<small>Click to move the crosshair and read the value; scroll for slices; drag with "
                                 "the right button for window/level.</small>")
        super().__init__([self.preset, self.view, *self.opacity.values(), self.status, help_line], **kwargs)

    def _niivue(self, height: int):
        from ipyniivue import MultiplanarType, NiiVue, SliceType

        nv = NiiVue(height=height, slice_type=SliceType.MULTIPLANAR, multiplanar_layout=MultiplanarType.GRID,
                    is_colorbar=True, is_orientation_text_visible=True, show_3d_crosshair=True)
        width, level = PRESETS.get(self.preset.value or "", (None, None))
        low, high = ((level - width / 2, level + width / 2) if width is not None
                     else (float(np.percentile(self.values, 1)), float(np.percentile(self.values, 99))))
        volumes = [{"data": nifti(self.values, self.affine), "name": "series.nii", "colormap": "gray",
                    "cal_min": low, "cal_max": high}]
        for index, (name, mask) in enumerate(self.overlays.items()):
            mask = np.asarray(mask)
            volumes.append({"data": nifti(mask, self.affine), "name": f"{name}.nii",
                            "colormap": OVERLAY_COLORMAPS[index % len(OVERLAY_COLORMAPS)], "opacity": 0.5,
                            "cal_min": float(mask.min()) if mask.dtype != np.bool_ else 0.0,
                            "cal_max": float(mask.max()) if mask.dtype != np.bool_ and mask.max() > mask.min() else 1.0})
        nv.load_volumes(volumes)
        nv.on_location_change(self._located)
        return nv

    def _set_window(self, preset: str | None) -> None:
        if preset is None:
            return
        width, level = PRESETS[preset]
        self.view.volumes[0].cal_min, self.view.volumes[0].cal_max = level - width / 2, level + width / 2

    def _set_opacity(self, index: int, value: float) -> None:
        self.view.volumes[index].opacity = value

    def _located(self, location: dict) -> None:
        """The crosshair moved: its position and the series' value there (from the data, not the screen)."""
        x, y, z = (int(v) for v in location.get("vox", (0, 0, 0)))
        if not (0 <= z < self.values.shape[0] and 0 <= y < self.values.shape[1] and 0 <= x < self.values.shape[2]):
            return
        value = self.values[z, y, x]
        mm = ", ".join(f"{v:.1f}" for v in location.get("mm", ())[:3])
        shown = [f"<b>{float(value):g}{' ' + self.unit if self.unit else ''}</b>"]
        shown += [f"{html.escape(name)} {float(np.asarray(mask)[z, y, x]):g}" for name, mask in self.overlays.items()]
        self.status.value = (f'<span class="medlib-value">{" · ".join(shown)}</span> at voxel '
                             f"(x {x}, y {y}, slice {z}), {mm} mm")


class SliceViewer(widgets.VBox):
    """Windowed PNG slices of a volume (z, y, x), a slider and CT presets: the fallback viewer."""

    def __init__(self, values: np.ndarray, spacing=(1.0, 1.0, 1.0), *, preset: str = "CT soft tissue",
                 status: widgets.HTML | None = None, zoom: int = 4, **kwargs):
        self.values = np.asarray(values)
        slices, rows, columns = self.values.shape
        self.preset = widgets.ToggleButtons(options=list(PRESETS), value=preset, description="Window",
                                            style={"button_width": "auto"})
        self.slice = widgets.IntSlider(min=0, max=slices - 1, value=slices // 2, description="Slice",
                                       continuous_update=False)
        # the slice at its in-plane aspect ratio and at most `zoom` screen pixels per pixel: never stretched to the cell
        dy, dx = (float(s) for s in spacing[1:])
        width = min(columns * zoom, 512)
        self.image = widgets.Image(format="png", layout=widgets.Layout(
            width=f"{width}px", height=f"{round(width * rows * dy / (columns * dx))}px", max_width="100%"))
        self.status = status if status is not None else widgets.HTML()
        for control in (self.preset, self.slice):
            control.observe(lambda _: self.render(), "value")
        super().__init__([self.preset, self.slice, self.image, self.status], **kwargs)
        self.render()

    @property
    def current_slice(self) -> np.ndarray:
        return self.values[self.slice.value]

    def render(self) -> None:
        width, level = PRESETS[self.preset.value]
        self.image.value = png(window(self.current_slice, width, level))
        self.status.value = f"slice {self.slice.value + 1}/{self.slice.max + 1}; W {width:g} L {level:g}"
