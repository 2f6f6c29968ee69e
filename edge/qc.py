"""The quality check of each series before delivery, by a predefined protocol.

The checks are :mod:`medlib.qa.series`'s, the same a notebook runs before a model sees a
series: missing or duplicated slices, non-uniform spacing, mixed orientations or sizes, a
modality the site does not deliver, and pixel data that cannot be decoded. The report travels
with the delivery (``qc.json`` of the version); a harvest's ``on_qc_failure`` says whether a
failing series is held back at the site or delivered flagged.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from medlib.qa.series import Facts, SeriesReport, check_facts, check_series, file_facts

__all__ = ["Facts", "SeriesReport", "check_facts", "check_series", "file_facts", "report"]


def report(series: list[SeriesReport], on_failure: str) -> dict[str, Any]:
    """The QC report of a harvest, as delivered."""
    failed = [s for s in series if not s.passed]
    return {"protocol": "medhub edge QC 1: missing/duplicated slices, spacing, orientation, size, modality, decoding",
            "on_failure": on_failure,
            "summary": {"series": len(series), "passed": len(series) - len(failed), "failed": len(failed),
                        "held_back": len(failed) if on_failure == "hold" else 0},
            "series": [asdict(s) | {"passed": s.passed} for s in series]}
