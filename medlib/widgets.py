"""Notebook widgets: browse the datasets you may use, and look at their series.

    from medlib.widgets import DatasetBrowser
    DatasetBrowser()

The browser shows a table of your granted datasets, the series of the one you pick, and that
series in :class:`medlib.viewer.SeriesViewer` (NiiVue: three planes, window/level, the value
under the crosshair). A dataset is opened (and the opening audited) only when you pick it.
"""

from __future__ import annotations

import html

import ipywidgets as widgets

from . import datasets as mds
from .viewer import SeriesViewer

COLUMNS = ("id", "title", "modality", "sensitivity", "licence")


class DatasetBrowser(widgets.VBox):
    """Your granted datasets, their series, and a viewer of the series you pick."""

    def __init__(self, **kwargs):
        self._granted = mds.list()
        self._tree = None
        self.table = widgets.HTML(self._table_html())
        ids = [d["id"] for d in self._granted]
        self.dataset = widgets.Dropdown(options=[("(pick a dataset)", None)] + [(i, i) for i in ids],
                                        description="Dataset")
        self.series = widgets.Dropdown(options=[], description="Series", disabled=True)
        self.viewer: SeriesViewer | None = None
        self.view = widgets.Box()  # where the viewer goes
        self.status = widgets.HTML()
        self.dataset.observe(self._on_dataset, "value")
        self.series.observe(self._on_series, "value")
        super().__init__([self.table, self.dataset, self.series, self.view, self.status], **kwargs)

    def _table_html(self) -> str:
        if not self._granted:
            return "<p>No dataset is granted to you; ask a dataset's owners for one on the hub's Data access page.</p>"
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(d.get(k, '')))}</td>" for k in COLUMNS) + "</tr>"
                       for d in self._granted)
        head = "".join(f"<th>{h}</th>" for h in COLUMNS)
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
        node = self._tree[change["new"]]
        self.viewer = SeriesViewer(node, layout=widgets.Layout(width="100%"))
        self.view.children = [self.viewer]
        self.status.value = f"{html.escape(self.dataset.value)}: {html.escape(self.series.label)}"
