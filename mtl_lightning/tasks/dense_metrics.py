"""Metrics of the dense regression tasks, as torchmetrics ``Metric`` subclasses.

Every state is a sum over pixels (``dist_reduce_fx="sum"``), so a value computed under DDP is
the value of the whole data set, not a mean of per-process means. Invalid pixels (no ground
truth) are left out by the caller's ``valid`` mask. Each metric declares its own direction
(``higher_is_better``), which ``{stage}/mtl/score`` and delta_m read.

Depth (Eigen et al. 2014, "Depth Map Prediction from a Single Image using a Multi-Scale Deep
Network"; the NYUv2 conventions of Liu et al. 2019, MTAN, and LibMTL): mean absolute error,
mean relative error ``|p - t| / t``, root mean squared error, and the threshold accuracies
``delta_k``: the fraction of pixels with ``max(p / t, t / p) < 1.25^k``.

Surface normals (Eigen & Fergus 2015; the same conventions): the angle between predicted
and true unit normals in degrees; its mean, its median and the fractions of pixels within
11.25, 22.5 and 30 degrees. The median is read from a histogram of angles with fixed bins of
``ANGLE_BIN`` degrees summed over processes, so it is exact to half a bin under DDP.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

#: Width of the angle histogram's bins in degrees (the median's resolution).
ANGLE_BIN = 0.01
ANGLE_BINS = round(180.0 / ANGLE_BIN)


class _PixelMean(Metric):
    """Sum of a per-pixel quantity and the number of pixels, over every update."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pixels", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def per_pixel(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, prediction: torch.Tensor, target: torch.Tensor,
               valid: torch.Tensor) -> None:
        """``prediction`` and ``target`` of one shape; ``valid`` selects the pixels (depth:
        ``[B, H, W]`` maps; normals: ``[B, H, W]`` angles are computed by the caller)."""
        values = self.per_pixel(prediction.float(), target.float())[valid]
        self.total += values.double().sum()
        self.pixels += valid.sum()

    def compute(self) -> torch.Tensor:
        return (self.total / self.pixels.clamp(min=1)).float()


class DepthAbsError(_PixelMean):
    """Mean absolute depth error ``|p - t|`` over valid pixels (lower is better)."""

    higher_is_better = False

    def per_pixel(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (prediction - target).abs()


class DepthRelError(_PixelMean):
    """Mean relative depth error ``|p - t| / t`` over valid pixels (lower is better)."""

    higher_is_better = False

    def per_pixel(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (prediction - target).abs() / target.clamp(min=1e-6)


class DepthRMSE(_PixelMean):
    """Root mean squared depth error over valid pixels (lower is better)."""

    higher_is_better = False

    def per_pixel(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (prediction - target) ** 2

    def compute(self) -> torch.Tensor:
        return super().compute().sqrt()


class DepthDelta(_PixelMean):
    """Fraction of valid pixels with ``max(p / t, t / p) < 1.25 ** power`` (higher is
    better). A prediction of zero or below is never within the threshold."""

    higher_is_better = True

    def __init__(self, power: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = 1.25 ** power

    def per_pixel(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        positive = prediction > 0
        p = prediction.clamp(min=1e-6)
        t = target.clamp(min=1e-6)
        ratio = torch.maximum(p / t, t / p)
        return (positive & (ratio < self.threshold)).float()


def normal_angles(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angles in degrees between ``[B, 3, H, W]`` normal maps (both normalised here)."""
    p = torch.nn.functional.normalize(prediction.float(), dim=1)
    t = torch.nn.functional.normalize(target.float(), dim=1)
    cosine = (p * t).sum(1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cosine))


class AngleMean(_PixelMean):
    """Mean angular error in degrees (lower is better). ``update(angles, angles, valid)``
    with the ``[B, H, W]`` angles of :func:`normal_angles`."""

    higher_is_better = False

    def per_pixel(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return prediction


class AngleWithin(_PixelMean):
    """Fraction of valid pixels whose angular error is below ``degrees`` (higher is
    better)."""

    higher_is_better = True

    def __init__(self, degrees: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.degrees = degrees

    def per_pixel(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (prediction < self.degrees).float()


class AngleMedian(Metric):
    """Median angular error in degrees (lower is better), from a histogram of fixed
    ``ANGLE_BIN``-degree bins whose counts are summed over updates and processes; the value
    is the centre of the bin holding the median pixel."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("counts", torch.zeros(ANGLE_BINS, dtype=torch.float64),
                       dist_reduce_fx="sum")

    def update(self, angles: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
        bins = (angles[valid].float() / ANGLE_BIN).long().clamp(0, ANGLE_BINS - 1)
        self.counts += torch.bincount(bins, minlength=ANGLE_BINS).double()

    def compute(self) -> torch.Tensor:
        total = self.counts.sum()
        if total == 0:
            return torch.tensor(0.0)
        cumulative = self.counts.cumsum(0)
        index = int(torch.searchsorted(cumulative, total / 2))
        return torch.tensor((index + 0.5) * ANGLE_BIN, dtype=torch.float32)
