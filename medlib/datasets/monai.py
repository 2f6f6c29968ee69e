"""MONAI glue: a series as a ``MetaTensor``, laid out and oriented as MONAI's ``LoadImage`` does.

``LoadSeriesd`` is a dictionary transform: the item's key holds a :class:`~.series.Series`
(cheap to keep in a dataset's list: headers only), and becomes the volume (x, y, z) with its
affine in RAS, so that MONAI's spatial transforms (``Spacingd``, ``Orientationd``) apply as
they do to files loaded by ``LoadImaged``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .series import Series, ras_affine


def series_tensor(series: Series) -> MetaTensor:
    """The series volume (x, y, z), float32, with its RAS affine and DICOM metadata."""
    volume = series.read().transpose(2, 1, 0).astype(np.float32)
    affine = ras_affine(series.affine)
    meta = {**series.attrs, "SeriesInstanceUID": series.uid, "space": "RAS", "original_affine": affine,
            "spatial_shape": np.array(volume.shape), "original_channel_dim": float("nan")}
    return MetaTensor(volume, affine=affine, meta=meta)


class LoadSeriesd(MapTransform):
    """Replace each key's :class:`Series` by its volume as a MetaTensor."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = series_tensor(d[key])
        return d


def monai_dataset(items: Sequence[dict], transforms: Sequence | None = None, cache: bool = False):
    """A MONAI ``Dataset`` (``CacheDataset`` with ``cache``) loading the ``image`` key."""
    from monai.data import CacheDataset, Dataset
    from monai.transforms import Compose

    transform = Compose([LoadSeriesd("image"), *(transforms or ())])
    return CacheDataset(list(items), transform, progress=False) if cache else Dataset(list(items), transform)
