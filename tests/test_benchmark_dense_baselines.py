"""The dense tasks' trivial predictors (benchmarks/dense_baselines.py): the training means,
scored with the tasks' own metrics."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from dense_baselines import score, training_means


def batch(depth: float, normal: tuple[float, float, float], invalid_rows: int = 1) -> dict:
    depth_map = torch.full((2, 1, 4, 4), depth)
    depth_map[:, :, :invalid_rows] = 0  # no ground truth there
    normals = torch.tensor(normal).view(1, 3, 1, 1).expand(2, 3, 4, 4).clone()
    normals[:, :, :invalid_rows] = 0
    has = torch.tensor([True, True])
    return {"targets": {"depth": depth_map, "normals": normals},
            "has": {"depth": has, "normals": has}}


def test_means_skip_invalid_pixels_and_score_like_the_tasks() -> None:
    means = training_means([batch(2.0, (0.0, 0.0, 1.0)), batch(4.0, (0.0, 0.0, 1.0))])
    assert float(means["depth"]) == pytest.approx(3.0)  # zeros are no ground truth
    assert means["normals"].tolist() == pytest.approx([0.0, 0.0, 1.0])
    result = score([batch(3.0, (0.0, 0.0, 1.0))], means)
    assert result["depth/abs_err"] == pytest.approx(0.0)
    assert result["depth/delta1"] == pytest.approx(1.0)
    assert result["normals/mean_angle"] == pytest.approx(0.0, abs=1e-2)
    off = score([batch(6.0, (1.0, 0.0, 0.0))], means)
    assert off["depth/abs_err"] == pytest.approx(3.0)
    assert off["normals/mean_angle"] == pytest.approx(90.0, abs=1e-2)
    assert off["normals/within_30"] == 0.0
