"""Dense maps as pictures: a colour map for scalar maps (depth), RGB for normals.

The colour map interpolates linearly between a few anchor colours sampled from matplotlib's
perceptually uniform *viridis* (van der Walt & Smith 2015), so no plotting library is needed
at training time.
"""

from __future__ import annotations

import torch

#: viridis at 0, 0.25, 0.5, 0.75 and 1 (RGB, 0-255).
VIRIDIS_ANCHORS = torch.tensor([
    [68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37],
], dtype=torch.float32)


def colorize(values: torch.Tensor, valid: torch.Tensor | None = None,
             low: float | None = None, high: float | None = None) -> torch.Tensor:
    """A ``[H, W]`` map as a uint8 ``[3, H, W]`` picture: ``low`` (default: the smallest valid
    value) is dark blue, ``high`` (the largest) yellow, invalid pixels black."""
    values = values.detach().float().cpu()
    valid = torch.ones_like(values, dtype=torch.bool) if valid is None else valid.cpu()
    if not bool(valid.any()):
        return torch.zeros(3, *values.shape, dtype=torch.uint8)
    low = float(values[valid].min()) if low is None else low
    high = float(values[valid].max()) if high is None else high
    scaled = ((values - low) / max(high - low, 1e-12)).clamp(0, 1) * (len(VIRIDIS_ANCHORS) - 1)
    lower = scaled.floor().long().clamp(max=len(VIRIDIS_ANCHORS) - 2)
    fraction = (scaled - lower)[..., None]
    colors = VIRIDIS_ANCHORS[lower] * (1 - fraction) + VIRIDIS_ANCHORS[lower + 1] * fraction
    colors[~valid] = 0
    return colors.round().to(torch.uint8).permute(2, 0, 1)


def normals_to_rgb(normals: torch.Tensor) -> torch.Tensor:
    """``[3, H, W]`` unit normals as uint8 RGB in the usual ``(n + 1) / 2`` encoding; zero
    vectors (no ground truth) stay black."""
    normals = normals.detach().float().cpu()
    valid = normals.abs().sum(0) > 0
    rgb = ((normals + 1) / 2 * 255).round().clamp(0, 255).to(torch.uint8)
    return rgb * valid
