"""The feature table (``features.csv``): every feature medlib computes, by family and key, with
its IBSI identifier and name, its PyRadiomics name where PyRadiomics has it, and, for the
families built on a matrix of counts (GLRLM, GLSZM, GLDZM, NGLDM), the generic count-matrix
feature it is (:func:`medlib.radiomics.texture.count_matrix_features`)."""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path

FEATURES = Path(__file__).with_name("features.csv")


@cache
def _rows() -> tuple[dict[str, str], ...]:
    with open(FEATURES, newline="") as f:
        return tuple(csv.DictReader(f))


def feature_table() -> list[dict[str, str]]:
    """The rows of ``features.csv``: family, key, ibsi_id, ibsi_name, pyradiomics, count_feature."""
    return [dict(r) for r in _rows()]


def count_features(family: str) -> dict[str, str]:
    """Feature key → generic count-matrix feature, for a count-matrix family."""
    return {r["key"]: r["count_feature"] for r in _rows() if r["family"] == family and r["count_feature"]}
