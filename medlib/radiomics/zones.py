"""Zone texture (IBSI 1, 3.8 GLSZM and 3.9 GLDZM), batched in torch.

A zone is a set of linked ROI voxels of one grey level: 8-connected in the slice for 2D,
26-connected for 3D. Zones are labelled by connected components over the ROI's voxels only:
each voxel starts with its own label, then every voxel takes the smallest label among its
linked neighbours and follows its label's label (pointer jumping) until nothing changes, a
few dozen whole-tensor steps however large the zones. The distance of a voxel to the ROI edge
(GLDZM) is the number of 4-connected (2D) or 6-connected (3D) steps to the outside of the
morphological mask, edge voxels being 1; a zone's distance is its voxels' smallest.

Matrices count zones by grey level and zone size (distance); columns are only the sizes that
occur, so a zone of a million voxels costs one column, not a million.
"""

from __future__ import annotations

import torch

from .neighbourhood import aggregate_by_slice
from .table import count_features
from .texture import DIRECTIONS_2D, DIRECTIONS_3D, _flat, _steps, count_matrix_features

AGGREGATIONS = ("2D", "2.5D", "3D")
#: (dz, dy, dx) of the 4-connected (in-plane) and 6-connected neighbours, one of each pair.
FACES_2D = ((0, 0, 1), (0, 1, 0))
FACES_3D = FACES_2D + ((1, 0, 0),)


def _components(flat: torch.Tensor, voxels: torch.Tensor, steps: list[int]) -> torch.Tensor:
    """For each ROI voxel (flat indices ``voxels`` into the padded ``flat`` levels), the index
    in ``voxels`` of one voxel of its zone, the same for all voxels of the zone."""
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
    label = torch.arange(n, device=flat.device)
    while True:
        smallest = label.clone()
        smallest.scatter_reduce_(0, a, label[b], "amin")
        smallest.scatter_reduce_(0, b, label[a], "amin")
        smallest = smallest[smallest]  # jump: follow the label's label
        if torch.equal(smallest, label):
            return label
        label = smallest


def _edge_distance(inside: torch.Tensor, voxels: torch.Tensor, steps: list[int]) -> torch.Tensor:
    """Distance to the edge of ``inside`` (flat padded mask) for each of ``voxels``."""
    distance = torch.zeros(inside.shape, dtype=torch.int64, device=inside.device)
    morph = torch.nonzero(inside).flatten()
    distance[morph] = 1
    both = torch.tensor(steps + [-s for s in steps], device=inside.device)
    around = morph[:, None] + both[None, :]
    while True:
        nearest = distance[around].amin(1) + 1  # outside is 0: edge voxels stay 1
        if torch.equal(nearest, distance[morph]):
            return distance[voxels]
        distance[morph] = nearest


class Zones:
    """The zones of a batch of discretised volumes (B, Z, Y, X), 0 outside the intensity mask,
    for the 2D and 3D connectedness; ``morphological`` (B, Z, Y, X) bool is the mask the
    distances are measured in (the intensity mask where not given)."""

    def __init__(self, levels: torch.Tensor, morphological: torch.Tensor | None = None):
        self.batch, self.slices = levels.shape[:2]
        flat, strides, volume = _flat(levels)
        voxels = torch.nonzero(flat).flatten()
        self.voxels_per_slice = torch.bincount((voxels // volume) * self.slices + (voxels % volume) // strides[0] - 1,
                                               minlength=self.batch * self.slices)
        steps = _steps(strides, levels.device).tolist()
        edge = (_flat(morphological.to(levels.dtype))[0] > 0) if morphological is not None else flat > 0
        face_steps = {name: [sum(d * s for d, s in zip(f, strides)) for f in faces]
                      for name, faces in (("2D", FACES_2D), ("3D", FACES_3D))}
        self.found = {}
        for name, linked in (("2D", steps[:len(DIRECTIONS_2D)]), ("3D", steps[:len(DIRECTIONS_3D)])):
            label = _components(flat, voxels, linked)
            roots = torch.nonzero(label == torch.arange(len(label), device=label.device)).flatten()
            root_of = torch.searchsorted(roots, label)  # each voxel's zone number
            size = torch.bincount(root_of, minlength=len(roots))
            distance = _edge_distance(edge, voxels, face_steps[name])
            nearest = torch.full((len(roots),), torch.iinfo(torch.int64).max, device=label.device)
            nearest.scatter_reduce_(0, root_of, distance, "amin")
            first = voxels[roots]
            cell = (first // volume) * self.slices + (first % volume) // strides[0] - 1  # the zone's ROI and slice
            self.found[name] = (flat[first], cell, size, nearest)

    def features(self, n_levels: int, family: str) -> dict[str, dict[str, torch.Tensor]]:
        """Features per aggregation: "szm" (GLSZM, zones counted by grey level and size) or
        "dzm" (GLDZM, by grey level and distance to the ROI edge)."""
        which = "size" if family == "szm" else "distance"
        names = count_features(family)
        b, z, ng = self.batch, self.slices, n_levels

        columns = {}

        def build(neighbourhood, per_slice):
            level, cell, size, distance = self.found[neighbourhood]
            count = size if which == "size" else distance
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

        return aggregate_by_slice(b, z, build, features)
