"""Notebook widgets: browse the datasets you may use, and look at their series.

    from medlib.widgets import DatasetBrowser
    DatasetBrowser()

The browser shows a table of your granted datasets, the series of the one you pick, and a
slice viewer with a slice slider and window/level presets (CT lung, soft tissue, bone). A
dataset is opened (and the opening audited) only when you pick it.
"""

from __future__ import annotations

import html
import io

import ipywidgets as widgets
import numpy as np

from . import datasets as mds

#: (window width, window level) in HU.
PRESETS = {"CT lung": (1500.0, -600.0), "CT soft tissue": (400.0, 40.0), "CT bone": (1800.0, 400.0)}


def window(values: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map values to 0-255 by a window (linear, clipped), as radiology viewers do."""
    low = level - width / 2
    return (np.clip((values.astype(np.float32) - low) / width, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def png(gray: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


class DatasetBrowser(widgets.VBox):
    """Your granted datasets, their series, and a slice viewer."""

    def __init__(self, **kwargs):
        self._granted = mds.list()
        self._tree = None
        self.table = widgets.HTML(self._table_html())
        ids = [d["id"] for d in self._granted]
        self.dataset = widgets.Dropdown(options=[("(pick a dataset)", None)] + [(i, i) for i in ids],
                                        description="Dataset")
        self.series = widgets.Dropdown(options=[], description="Series", disabled=True)
        self.preset = widgets.ToggleButtons(options=list(PRESETS), value="CT soft tissue", description="Window")
        self.slice = widgets.IntSlider(min=0, max=0, description="Slice", disabled=True, continuous_update=False)
        self.image = widgets.Image(format="png")
        self.status = widgets.HTML()
        self.dataset.observe(self._on_dataset, "value")
        self.series.observe(self._on_series, "value")
        for control in (self.preset, self.slice):
            control.observe(lambda _: self.render(), "value")
        super().__init__([self.table, self.dataset, self.series, self.preset, self.slice, self.image, self.status],
                         **kwargs)

    def _table_html(self) -> str:
        if not self._granted:
            return "<p>No dataset is granted to you; your data steward can add you to a dataset's group.</p>"
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(d.get(k, '')))}</td>" for k in
                             ("id", "title", "modality", "sensitivity", "licence")) + "</tr>" for d in self._granted)
        head = "".join(f"<th>{h}</th>" for h in ("id", "title", "modality", "sensitivity", "licence"))
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"

    def _on_dataset(self, change) -> None:
        if change["new"] is None:
            return
        self._tree = mds.open(change["new"])
        options = []
        for name, node in self._tree.children.items():
            label = node.attrs.get("SeriesDescription") or node.attrs.get("SeriesNumber") or name
            options.append((f"{label} ({node['image'].shape[0]} slices)", name))
        self.series.options, self.series.disabled = options, not options
        if options:
            self.series.value = options[0][1]
        else:
            self.status.value = "This dataset holds no image series."

    def _on_series(self, change) -> None:
        if change["new"] is None or self._tree is None:
            return
        slices = self._tree[change["new"]]["image"].shape[0]
        self.slice.max, self.slice.disabled = slices - 1, False
        self.slice.value = slices // 2
        self.render()

    @property
    def current_slice(self) -> np.ndarray | None:
        """The values of the slice on show, or None."""
        if self._tree is None or self.series.value is None:
            return None
        return self._tree[self.series.value]["image"][self.slice.value].values

    def render(self) -> None:
        values = self.current_slice
        if values is None:
            return
        width, level = PRESETS[self.preset.value]
        self.image.value = png(window(values, width, level))
        node = self._tree[self.series.value]
        z = float(node["image"].z[self.slice.value])
        self.status.value = f"slice {self.slice.value + 1}/{self.slice.max + 1} at {z:.1f} mm; W {width:g} L {level:g}"
