"""Zone texture (IBSI 1, 3.8 GLSZM and 3.9 GLDZM), batched in torch.

A zone is a set of linked ROI voxels of one grey level: 8-connected in the slice for 2D,
26-connected for 3D. Zones are labelled by connected components over the ROI's voxels only,
as a forest: each voxel starts as its own root; in each round, the larger root of every link
between two trees is hooked under the smaller, then every voxel is pointed at its root
(pointer jumping), and links inside one tree are dropped for good. A handful of whole-tensor
rounds, however large the zones. The distance of a voxel to the ROI edge
(GLDZM) is the number of 4-connected (2D) or 6-connected (3D) steps to the outside of the
morphological mask, edge voxels being 1; a zone's distance is its voxels' smallest.

Matrices count zones by grey level and zone size (distance); columns are only the sizes that
occur, so a zone of a million voxels costs one column, not a million.
"""

from __future__ import annotations

import torch

from . import kernels
from .neighbourhood import aggregate_by_slice
from .table import count_features
from .texture import DIRECTIONS_2D, DIRECTIONS_3D, _flat, _steps, count_matrix_features

AGGREGATIONS = ("2D", "2.5D", "3D")


def _components(flat: torch.Tensor, voxels: torch.Tensor, steps: list[int]) -> torch.Tensor:
    """For each ROI voxel (flat indices ``voxels`` into the padded ``flat`` levels), the index
    in ``voxels`` of the first voxel of its zone, the same for all voxels of the zone: compiled
    on the CPU (:func:`medlib.radiomics.kernels.components`), in whole tensors elsewhere."""
    if flat.device.type == "cpu":
        return kernels.components(flat, voxels, steps)
    return _components_in_tensors(flat, voxels, steps)


def _components_in_tensors(flat: torch.Tensor, voxels: torch.Tensor, steps: list[int]) -> torch.Tensor:
    n = len(voxels)
    position = torch.full_like(flat, -1)
    position[voxels] = torch.arange(n, device=flat.device)
    sources, targets = [], []
    for step in steps:  # one of each opposite pair; links go both ways below
        other = position[voxels + step]
        linked = (other >= 0) & (flat[voxels + step] == flat[voxels])
        sources.append(torch.arange(n, device=flat.device)[linked])
        targets.append(other[linked])
    a, b = torch.cat(sources), torch.cat(targets)
    label = torch.arange(n, device=flat.device)  # every voxel points to a voxel of its zone; roots to themselves
    while True:
        la, lb = label[a], label[b]  # the roots of each link's ends
        apart = la != lb
        a, b, la, lb = a[apart], b[apart], la[apart], lb[apart]  # a link within one tree stays so
        if not len(a):
            return label
        label.scatter_reduce_(0, torch.maximum(la, lb), torch.minimum(la, lb), "amin")  # hook the larger root
        while True:  # point every voxel at its root
            jumped = label[label]
            if torch.equal(jumped, label):
                break
            label = jumped


def _edge_distance(inside: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """City-block distance of every voxel of ``inside`` (B, Z, Y, X), bordered by outside, to
    the nearest voxel outside, along ``axes`` only ((2, 3): in the slice): the number of
    erosions that removes it. One pass per axis, each a pair of running minima:
    min_j (d_j + |i - j|) = i + cummin_{j<=i}(d_j - j), and the same from the other end."""
    d = torch.where(inside, sum(inside.shape[1:]), 0).to(torch.int64)
    for axis in axes:
        shape = [1] * d.dim()
        shape[axis] = d.shape[axis]
        i = torch.arange(d.shape[axis], device=d.device).view(shape)
        forward = torch.cummin(d - i, dim=axis).values + i
        backward = torch.cummin((d + i).flip(axis), dim=axis).values.flip(axis) - i
        d = torch.minimum(forward, backward)
    return d


class Zones:
    """The zones of a batch of discretised volumes (B, Z, Y, X), 0 outside the intensity mask,
    for the 2D and 3D connectedness; ``morphological`` (B, Z, Y, X) bool is the mask the
    distances are measured in (the intensity mask where not given)."""

    def __init__(self, levels: torch.Tensor, morphological: torch.Tensor | None = None):
        self.batch, self.slices = levels.shape[:2]
        self.flat, self.strides, self.volume = _flat(levels)
        self.voxels = voxels = torch.nonzero(self.flat).flatten()
        self.voxels_per_slice = torch.bincount((voxels // self.volume) * self.slices + (voxels % self.volume)
                                               // self.strides[0] - 1, minlength=self.batch * self.slices)
        self.steps = _steps(self.strides, levels.device).tolist()
        padded = torch.nn.functional.pad(morphological if morphological is not None else levels > 0, (1, 1) * 3)
        self.morphological = padded
        self._found: dict[str, tuple] = {}
        self.zone_of: dict[str, torch.Tensor] = {}

    def found(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The zones of connectedness ``name`` ("2D" or "3D", labelled when first asked for):
        each zone's grey level, its ROI and slice (of its first voxel), and its size."""
        if name not in self._found:
            linked = self.steps[:len(DIRECTIONS_2D if name == "2D" else DIRECTIONS_3D)]
            label = _components(self.flat, self.voxels, linked)
            roots = torch.nonzero(label == torch.arange(len(label), device=label.device)).flatten()
            self.zone_of[name] = zone_of = torch.searchsorted(roots, label)  # each voxel's zone number
            size = torch.bincount(zone_of, minlength=len(roots))
            first = self.voxels[roots]
            cell = (first // self.volume) * self.slices + (first % self.volume) // self.strides[0] - 1
            self._found[name] = (self.flat[first], cell, size)
        return self._found[name]

    def distances(self, name: str) -> torch.Tensor:
        """Each zone's distance to the edge of the morphological mask, 4-connected in the slice
        ("2D") or 6-connected ("3D"): the smallest of its voxels'."""
        voxel = _edge_distance(self.morphological, (2, 3) if name == "2D" else (1, 2, 3)).flatten()[self.voxels]
        zones = self.found(name)[2]
        nearest = torch.full((len(zones),), torch.iinfo(torch.int64).max, device=voxel.device)
        return nearest.scatter_reduce_(0, self.zone_of[name], voxel, "amin")

    def features(self, n_levels: int, family: str, only=None) -> dict[str, dict[str, torch.Tensor]]:
        """Features per aggregation: "szm" (GLSZM, zones counted by grey level and size) or
        "dzm" (GLDZM, by grey level and distance to the ROI edge)."""
        names = count_features(family)
        b, z, ng = self.batch, self.slices, n_levels

        columns = {}

        def build(neighbourhood, per_slice):
            level, cell, size = self.found(neighbourhood)
            count = size if family == "szm" else self.distances(neighbourhood)
            columns[neighbourhood], column = torch.unique(count, return_inverse=True)
            nc = len(columns[neighbourhood])
            group, groups = (cell, b * z) if per_slice else (cell // z, b)
            m = torch.zeros(groups * ng * nc, dtype=torch.float64, device=count.device)
            m.index_add_(0, (group * ng + level - 1) * nc + column, torch.ones(len(column), dtype=m.dtype, device=m.device))
            nv = self.voxels_per_slice.to(torch.float64)
            return m.view(groups, ng, nc), nv if per_slice else nv.view(b, z).sum(1)

        def features(neighbourhood, m, nv):
            generic = count_matrix_features(m, columns[neighbourhood].to(torch.float64))
            out = {name: generic[key] for name, key in names.items()}
            out["zone_percentage"] = generic["total"] / nv  # zones per voxel
            return out

        return aggregate_by_slice(b, z, build, features, only)
