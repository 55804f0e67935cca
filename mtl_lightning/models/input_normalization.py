"""The backbone's input statistics, applied inside the model.

The data pipeline hands the model images scaled to [0, 1]; the model subtracts the mean and
divides by the standard deviation its backbone was pretrained with (timm's pretrained config:
ImageNet's for most CNNs, 0.5 / 0.5 for many ViTs, CLIP's or EVA's own), unless the user gives
others. The statistics are buffers, so they are saved in every checkpoint and ``predict`` and
``export`` normalise exactly as training did, whatever the defaults are when the checkpoint is
read again.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

#: State-dict keys of the statistics inside a :class:`~mtl_lightning.module.MultiTaskModule`.
MEAN_KEY, STD_KEY = "normalize.mean", "normalize.std"


class InputNormalization(nn.Module):
    """``(image - mean) / std`` per channel, for images in [0, 1].

    Args:
        mean, std: one value per input channel.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(
                f"model.image_mean {list(mean)} and model.image_std {list(std)} need one value "
                "per image channel each, and every std must be positive.")
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def fill_legacy_statistics(state_dict: MutableMapping[str, torch.Tensor]) -> None:
    """Give a checkpoint written before the model normalised its input the statistics its data
    pipeline used then (ImageNet's), so that it loads and predicts as it was trained."""
    if state_dict and MEAN_KEY not in state_dict and STD_KEY not in state_dict:
        state_dict[MEAN_KEY] = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, -1, 1, 1)
        state_dict[STD_KEY] = torch.tensor(IMAGENET_DEFAULT_STD).view(1, -1, 1, 1)
