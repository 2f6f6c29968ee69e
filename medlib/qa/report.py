"""Reports of medlib.qa: one JSON document, an HTML page with plots made of it, stored and audited.

The document holds no time, and its numbers are rounded, so that a second run on the same inputs
gives the same report, byte for byte: its SHA-256 names it. :meth:`Report.save` writes
``report.json`` and ``report.html`` atomically into a folder (default
``~/qa-reports/<kind>-<digest>``) and records the audit event ``qa-report``.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import __version__

#: Where reports are stored unless a folder is given.
DEFAULT_FOLDER = Path("~/qa-reports")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1.5em; max-width: 72em; color: #1d2733; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; } td, th { padding: .25em .7em; border-bottom: 1px solid #eaeef2; }
th { text-align: left; background: #f6f8fa; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.flag { color: #b42318; font-weight: 600; } .ok { color: #1a7f37; }
figure { display: inline-block; margin: .5em 1em .5em 0; }
code { font-size: .92em; }
"""


def software() -> dict[str, str]:
    """The versions of the code a report was made with."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"medlib": __version__}
    for name in ("torch", "monai", "scikit-learn", "scipy", "captum"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def clean(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has neither) and numpy scalars as Python's."""
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Report:
    """A report: its ``document`` (what the JSON holds) and the HTML page made of it."""

    kind = "report"
    title = "medlib.qa report"

    def __init__(self, document: Mapping[str, Any]):
        self.document = clean({"kind": self.kind, **document})
        self.folder: Path | None = None

    def to_json(self) -> str:
        return json.dumps(self.document, sort_keys=True, indent=1, allow_nan=False) + "\n"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def sections(self) -> Iterable[str]:
        """The HTML sections of the page (subclasses say what they show)."""
        return ()

    def to_html(self) -> str:
        body = "\n".join(self.sections())
        return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}"
                f"</title><style>{STYLE}</style></head><body>\n<h1>{html.escape(self.title)}</h1>\n{body}\n"
                f"<p><small>report SHA-256 <code>{self.sha256}</code> · made by medlib {html.escape(__version__)}"
                "</small></p></body></html>\n")

    def _repr_html_(self) -> str:
        return "\n".join(self.sections())

    def audit_object(self) -> dict[str, Any]:
        """What the ``qa-report`` audit event names (subclasses add the dataset and model)."""
        return {}

    def save(self, folder: str | os.PathLike[str] | None = None) -> Path:
        """Write ``report.json`` and ``report.html`` into ``folder`` (each atomically) and record
        the ``qa-report`` audit event; the folder."""
        from .. import audit

        folder = Path(folder).expanduser() if folder is not None else \
            DEFAULT_FOLDER.expanduser() / f"{self.kind}-{self.sha256[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in (("report.json", self.to_json()), ("report.html", self.to_html())):
            tmp = folder / f".{name}.{os.getpid()}"
            tmp.write_text(text)
            tmp.replace(folder / name)
        audit.record("qa-report", {"kind": self.kind, "report_sha256": self.sha256, **self.audit_object()},
                     folder=str(folder))
        self.folder = folder
        return folder


def svg(figure) -> str:
    """A matplotlib figure as inline SVG, the same bytes for the same figure."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "medlib-qa", "svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def figure(width: float = 4.2, height: float = 3.2):
    """A new figure and its axes (no pyplot: nothing global, no display needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.add_subplot()


def number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.4g}"
    return html.escape(str(value))


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """An HTML table of ``rows`` (mappings), the ``columns`` in order."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in (headers or columns))
    body = "".join("<tr>" + "".join(
        f"<td class=\"n\">{number(r.get(c))}</td>" if isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool)
        else f"<td>{number(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def estimate(e: Mapping[str, Any] | None) -> str:
    """``value (low–high)`` of an estimate's dict."""
    if not e or e.get("value") is None:
        return "–"
    if e.get("low") is None:
        return number(e["value"])
    return f"{number(e['value'])} ({number(e['low'])}–{number(e['high'])})"


def model_card(document: Mapping[str, Any]) -> str:
    """The section naming the model, the code and the data a report is about."""
    model, data, code = document.get("model", {}), document.get("data", {}), document.get("code", {})
    rows = [("model", model.get("name")), ("weights SHA-256", model.get("weights_sha256")),
            ("parameters", model.get("parameters")),
            ("trained on", "; ".join(", ".join(f"{k} {v}" for k, v in t.items()) for t in model.get("trained_on", []))
             or "not given"),
            ("evaluated on", f"{data.get('dataset') or data.get('folder', 'series given')}"
                             f"{'@' + data['version'] if data.get('version') else ''}"),
            ("its manifest SHA-256", data.get("manifest_sha256") or "none"), ("site", data.get("site") or "not given"),
            ("cases", data.get("series")), ("code", ", ".join(f"{k} {v}" for k, v in sorted(code.items())))]
    return "<h2>Model card</h2><table>" + "".join(
        f"<tr><th>{html.escape(k)}</th><td><code>{number(v)}</code></td></tr>" for k, v in rows) + "</table>"
