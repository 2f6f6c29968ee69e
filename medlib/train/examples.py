"""A small MONAI segmentation task for the docs, tests and benchmarks: synthetic 3D images of
spheres in noise (MONAI's ``create_test_image_3d``) and a UNet small enough for a CPU.

    from medlib.train.examples import SyntheticSpheres, small_unet, dice_loss
    result = fit(small_unet(), SyntheticSpheres(32), client=client, epochs=5, batch_size=4,
                 loss=dice_loss, optimizer=lambda p: torch.optim.Adam(p, 1e-3))
"""

from __future__ import annotations

import numpy as np
import torch


class SyntheticSpheres(torch.utils.data.Dataset):
    """``n`` image/label pairs of ``size``³ voxels, dicts of (1, D, H, W) float tensors; the
    same ``seed`` gives the same data anywhere (each sample is made when it is read)."""

    def __init__(self, n: int, size: int = 32, seed: int = 0):
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from monai.data import create_test_image_3d

        if not 0 <= index < self.n:
            raise IndexError(index)
        rad_min = max(2, self.size // 8)
        image, label = create_test_image_3d(self.size, self.size, self.size, num_objs=4, rad_min=rad_min,
                                            rad_max=max(rad_min + 1, self.size // 4), noise_max=0.5, num_seg_classes=1,
                                            random_state=np.random.RandomState(self.seed * 100_003 + index))
        return {"image": torch.from_numpy(image[None]).float(), "label": torch.from_numpy(label[None]).float()}


def hu_input(volume: np.ndarray, series: object = None) -> np.ndarray:
    """A CT volume (z, y, x, HU) as the small UNet's input in the examples: one channel, HU clipped
    to ±1000 and scaled to ±1 (``series`` unused: the signature of a medlib.qa transform)."""
    return np.clip(volume, -1000.0, 1000.0)[None].astype(np.float32) / 1000.0


def small_unet(channels: tuple[int, ...] = (8, 16, 32)) -> torch.nn.Module:
    """MONAI's UNet, 3D, one input and one output channel, instance normalisation."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=channels,
                strides=(2,) * (len(channels) - 1), num_res_units=1, norm="instance")


def dice_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MONAI's Dice loss on logits."""
    from monai.losses import DiceLoss

    return DiceLoss(sigmoid=True)(outputs, labels)
