"""Dense regression targets as tv_tensors, so the joint transforms move them with the image.

- :class:`DepthMap` (``[1, H, W]`` float, 0 = no ground truth) is a mask to torchvision:
  resized with nearest neighbours (a bilinear blend of a valid depth with an invalid 0 would
  invent depths at every object border), flipped and shifted like the image, and filled
  with 0 (invalid) where an affine transform uncovers the border.
- :class:`NormalMap` (``[3, H, W]`` float (x, y, z) components, a zero vector = no ground
  truth) moves like a mask too, and a flip also turns the vectors: a horizontal flip negates
  x, a vertical flip negates y (the camera-frame convention of NYUv2: x right, y down or up,
  z towards the camera; the sign flips the same either way).

Both are registered with torchvision's kernel registry (``register_kernel``), the documented
way to teach the v2 transforms a new tv_tensor's behaviour.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F


class DepthMap(tv_tensors.Mask):
    """A ``[1, H, W]`` float depth map; 0 means no ground truth."""


class NormalMap(tv_tensors.Mask):
    """A ``[3, H, W]`` float map of surface normals; a zero vector means no ground truth."""


def _flip_normals(normals: torch.Tensor, component: int, flip: Any) -> NormalMap:
    flipped = flip(normals.as_subclass(torch.Tensor)).clone()
    flipped[..., component, :, :] = -flipped[..., component, :, :]
    return tv_tensors.wrap(flipped, like=normals)


@F.register_kernel(functional=F.horizontal_flip, tv_tensor_cls=NormalMap)
def _horizontal_flip_normals(normals: NormalMap, **kwargs: Any) -> NormalMap:
    return _flip_normals(normals, 0, F.horizontal_flip_mask)


@F.register_kernel(functional=F.vertical_flip, tv_tensor_cls=NormalMap)
def _vertical_flip_normals(normals: NormalMap, **kwargs: Any) -> NormalMap:
    return _flip_normals(normals, 1, F.vertical_flip_mask)


__all__ = ["DepthMap", "NormalMap"]
