"""The GPUs a new server could have now, for the spawn form and the spawn itself.

The node's GPUs come from a live inventory read at each form render and each spawn: the
Docker engine's discovered NVIDIA devices (CDI, engines that report ``DiscoveredDevices``),
else the node's ``/dev/nvidia<N>`` device files (a hub in a container sees the host's ``/dev``
where ``medhub up`` binds it read-only, at :data:`HOST_DEV`). The GPUs in use are those the profiles of
this hub's running servers asked for. A profile that needs more than is free is shown as
unavailable, with the reason, and a request for it is refused before anything starts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

NODE_DEVICE = re.compile(r"nvidia[0-9]+")
CDI_GPU = re.compile(r"nvidia\.com/gpu=(?!all$).+")
HOST_DEV = Path("/run/medhub/host-dev")  # the host's /dev in the hub's container (medhub up), names only


def node_devices(root: Path | None = None) -> list[str]:
    """The node's NVIDIA GPUs: its ``nvidia<N>`` device files (``nvidiactl`` and the like are not
    GPUs), in ``root``: by default the host's /dev as :data:`HOST_DEV` where it is bound, else /dev."""
    root = root or (HOST_DEV if HOST_DEV.is_dir() else Path("/dev"))
    try:
        return sorted(p.name for p in root.iterdir() if NODE_DEVICE.fullmatch(p.name))
    except OSError:
        return []


def engine_devices(info: dict) -> list[str] | None:
    """The NVIDIA GPUs a Docker engine's ``/info`` reports (CDI ids such as ``nvidia.com/gpu=0``),
    or None where the engine does not report devices (before API 1.50)."""
    if "DiscoveredDevices" not in info:
        return None
    return sorted(d["ID"] for d in info["DiscoveredDevices"] or () if CDI_GPU.fullmatch(d.get("ID", "")))


@dataclass(frozen=True)
class GPUs:
    """The node's GPUs, and how many of them this hub's servers hold."""

    total: int
    in_use: int

    @property
    def free(self) -> int:
        return max(self.total - self.in_use, 0)

    @classmethod
    def held(cls, total: int, requests: Iterable[int]) -> GPUs:
        """``total`` GPUs, of which running servers asked for ``requests`` (-1: all of them)."""
        return cls(total, sum(total if n < 0 else n for n in requests))

    def unavailable(self, gpus: int) -> str | None:
        """Why a server asking for ``gpus`` (-1: all) cannot start now; None when it can."""
        if gpus == 0:
            return None
        if self.total == 0:
            return "this node has no GPU"
        if gpus < 0 and self.in_use:
            return f"{min(self.in_use, self.total)} of the node's {self.total} GPUs are in use"
        if gpus > self.free:
            if gpus > self.total:
                return f"this node has {self.total} GPU{'s' * (self.total != 1)}"
            return f"{self.free} of the node's {self.total} GPUs {'is' if self.free == 1 else 'are'} free"
        return None


@dataclass(frozen=True)
class ClusterGPUs:
    """A cluster's GPUs, node by node: what each has (allocatable) and has free."""

    nodes: tuple[tuple[int, int], ...]  # (allocatable, free) of each schedulable node

    def unavailable(self, gpus: int) -> str | None:
        """Why a server asking for ``gpus`` on one node cannot start now; None when one can take it."""
        if gpus <= 0 or any(free >= gpus for _, free in self.nodes):
            return None
        most = max((total for total, _ in self.nodes), default=0)
        if most == 0:
            return "no node of the cluster has a GPU"
        if most < gpus:
            return f"no node of the cluster has {gpus} GPUs"
        return f"no node has {gpus} GPU{'s' * (gpus != 1)} free now"
