"""Depth and surface normals: losses on valid pixels only, metrics on hand-computed values,
sums that merge exactly (as under DDP), heads at the input size, pictures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtl_lightning.models.neck import Features
from mtl_lightning.tasks.dense_metrics import (
    ANGLE_BIN,
    AngleMean,
    AngleMedian,
    AngleWithin,
    DepthAbsError,
    DepthDelta,
    DepthRelError,
    DepthRMSE,
    normal_angles,
)
from mtl_lightning.tasks.depth import DepthTask
from mtl_lightning.tasks.normals import NormalsTask


def features(batch: int = 2, channels: int = 8, size: int = 16) -> Features:
    pyramid = [torch.randn(batch, channels, size // s, size // s) for s in (4, 8, 16)]
    return Features(backbone=pyramid, pyramid=pyramid, strides=[4, 8, 16])


def built(task_class, **options):
    task = task_class(decoder_channels=8, **options)
    task.build_head(8, [8, 8, 8], [4, 8, 16])
    return task


# ------------------------------------------------------------------------ depth metrics
PRED = torch.tensor([[[1.0, 2.0], [3.0, 9.0]]])
TRUE = torch.tensor([[[1.0, 4.0], [2.0, 0.0]]])  # the 0 is "no ground truth"
VALID = TRUE > 0


def test_depth_metrics_on_hand_computed_values() -> None:
    # valid pixels: (1, 1), (2, 4), (3, 2): |d| = 0, 2, 1
    expected = {
        DepthAbsError: (0 + 2 + 1) / 3,
        DepthRelError: (0 + 2 / 4 + 1 / 2) / 3,
        DepthRMSE: math.sqrt((0 + 4 + 1) / 3),
    }
    for metric_class, value in expected.items():
        metric = metric_class()
        metric.update(PRED, TRUE, VALID)
        assert float(metric.compute()) == pytest.approx(value), metric_class.__name__
    # ratios max(p/t, t/p): 1, 2, 1.5 -> below 1.25: 1 pixel; 1.5625: 2; 1.953: 2
    for power, fraction in ((1, 1 / 3), (2, 2 / 3), (3, 2 / 3)):
        metric = DepthDelta(power)
        metric.update(PRED, TRUE, VALID)
        assert float(metric.compute()) == pytest.approx(fraction)


def test_depth_metric_directions_are_declared_by_the_metric() -> None:
    assert DepthAbsError.higher_is_better is False
    assert DepthRMSE.higher_is_better is False
    assert DepthDelta.higher_is_better is True
    assert AngleMedian.higher_is_better is False
    assert AngleWithin.higher_is_better is True


def test_metric_sums_merge_exactly_like_one_process() -> None:
    """Two processes' states summed equal one process that saw everything (pixel-weighted,
    not a mean of means)."""
    torch.manual_seed(0)
    pred, true = torch.rand(4, 5, 5) + 0.5, torch.rand(4, 5, 5) + 0.5
    true[0, :4] = 0  # the first image has few valid pixels: a mean of means would differ
    whole, first, second = DepthAbsError(), DepthAbsError(), DepthAbsError()
    whole.update(pred, true, true > 0)
    first.update(pred[:2], true[:2], true[:2] > 0)
    second.update(pred[2:], true[2:], true[2:] > 0)
    first.merge_state(second)
    assert float(first.compute()) == pytest.approx(float(whole.compute()))
    mean_of_means = (DepthAbsError(), DepthAbsError())
    mean_of_means[0].update(pred[:1], true[:1], true[:1] > 0)
    mean_of_means[1].update(pred[1:], true[1:], true[1:] > 0)
    naive = (float(mean_of_means[0].compute()) + float(mean_of_means[1].compute())) / 2
    assert naive != pytest.approx(float(whole.compute()), rel=1e-3)


# ----------------------------------------------------------------------- normal metrics
def unit(x: float, y: float, z: float) -> list[float]:
    norm = math.sqrt(x * x + y * y + z * z)
    return [x / norm, y / norm, z / norm]


def normal_map(vectors: list[list[float]]) -> torch.Tensor:
    """``[1, 3, 1, N]`` from N vectors."""
    return torch.tensor(vectors).T[None, :, None, :]


def test_angles_and_angle_metrics_on_hand_computed_values() -> None:
    angles_deg = [0.0, 10.0, 20.0, 45.0, 90.0]
    truth = normal_map([[0, 0, 1]] * 5)
    prediction = normal_map([unit(math.sin(math.radians(a)), 0, math.cos(math.radians(a)))
                             for a in angles_deg])
    angles = normal_angles(prediction, truth)
    assert angles.flatten().tolist() == pytest.approx(angles_deg, abs=1e-3)
    valid = torch.ones_like(angles, dtype=torch.bool)
    valid[..., -1] = False  # the 90-degree pixel has no ground truth
    expected = {AngleMean(): (0 + 10 + 20 + 45) / 4, AngleWithin(11.25): 2 / 4,
                AngleWithin(22.5): 3 / 4, AngleWithin(30.0): 3 / 4}
    for metric, value in expected.items():
        metric.update(angles, angles, valid)
        assert float(metric.compute()) == pytest.approx(value, abs=1e-4)
    median = AngleMedian()
    median.update(angles, angles, valid)  # 0, 10, 20, 45: the median lies in [10, 20]
    assert 10.0 - ANGLE_BIN <= float(median.compute()) <= 20.0 + ANGLE_BIN
    odd = AngleMedian()
    odd.update(angles, angles, torch.ones_like(valid))  # 0, 10, 20, 45, 90 -> 20
    assert float(odd.compute()) == pytest.approx(20.0, abs=ANGLE_BIN)


def test_median_histogram_merges_over_processes() -> None:
    torch.manual_seed(1)
    angles = torch.rand(2, 6, 6) * 60
    valid = torch.ones_like(angles, dtype=torch.bool)
    whole, first, second = AngleMedian(), AngleMedian(), AngleMedian()
    whole.update(angles, angles, valid)
    first.update(angles[:1], angles[:1], valid[:1])
    second.update(angles[1:], angles[1:], valid[1:])
    first.merge_state(second)
    assert float(first.compute()) == float(whole.compute())
    assert float(whole.compute()) == pytest.approx(float(angles.median()), abs=ANGLE_BIN)


# --------------------------------------------------------------------------- the tasks
def test_depth_head_predicts_at_the_input_size_and_l1_ignores_invalid_pixels() -> None:
    task = built(DepthTask)
    out = task(features(), (16, 16))
    assert out.shape == (2, 16, 16)
    target = torch.zeros(2, 16, 16)
    target[:, :8] = 2.0  # the lower half has no ground truth
    has = torch.tensor([True, True])
    expected = (out[:, :8] - 2.0).abs().mean()
    assert float(task.loss(out, target, has)) == pytest.approx(float(expected), rel=1e-5)
    changed = out.detach().clone()
    changed[:, 8:] += 100  # predictions at invalid pixels do not matter
    assert float(task.loss(changed, target, has)) == pytest.approx(float(expected), rel=1e-5)


def test_silog_loss_is_the_papers_formula_and_scale_invariant_at_lambda_one() -> None:
    task = built(DepthTask, loss="silog", silog_lambda=0.5)
    prediction = torch.tensor([[[1.0, 2.0, 4.0]]])
    target = torch.tensor([[[2.0, 2.0, 1.0]]])
    d = prediction.log() - target.log()
    expected = (d ** 2).mean() - 0.5 * d.mean() ** 2
    assert float(task.loss(prediction, target, torch.tensor([True]))) == pytest.approx(
        float(expected))
    invariant = built(DepthTask, loss="silog", silog_lambda=1.0)
    a = invariant.loss(prediction, target, torch.tensor([True]))
    b = invariant.loss(prediction * 3.0, target, torch.tensor([True]))
    assert float(a) == pytest.approx(float(b), abs=1e-6)


def test_unlabelled_batches_give_a_zero_loss_connected_to_the_head() -> None:
    for task in (built(DepthTask), built(NormalsTask)):
        out = task(features(), (16, 16))
        target = torch.ones(2, 3, 16, 16) if task.name == "normals" else torch.ones(2, 16, 16)
        loss = task.loss(out, target, torch.tensor([False, False]))
        assert float(loss) == 0.0
        loss.backward()
        assert all(p.grad is not None for p in task.parameters())


def test_normals_head_is_unit_length_and_cosine_loss_ignores_zero_vectors() -> None:
    task = built(NormalsTask)
    out = task(features(), (16, 16))
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(2, 16, 16), atol=1e-5)
    target = out.detach().clone() * 5.0  # same directions, other lengths
    target[0, :, :4] = 0  # no ground truth there
    has = torch.tensor([True, True])
    assert float(task.loss(out, target, has)) == pytest.approx(0.0, abs=1e-5)
    target[1] = -target[1]  # opposite directions on the second image: 1 - cos = 2
    loss = float(task.loss(out, target, has))
    valid_first, valid_second = 12 * 16, 16 * 16
    assert loss == pytest.approx(2 * valid_second / (valid_first + valid_second), rel=1e-4)
    l1 = built(NormalsTask, loss="l1")
    assert float(l1.loss(out, out.detach(), has)) == pytest.approx(0.0, abs=1e-6)


def test_metrics_of_the_tasks_update_from_outputs_and_skip_invalid_pixels() -> None:
    depth = built(DepthTask)
    metrics = depth.build_metrics("val")
    prediction = torch.full((1, 4, 4), 2.0)
    target = torch.full((1, 4, 4), 2.0)
    target[0, 0] = 0.0  # no ground truth: a wrong prediction there must not count
    prediction[0, 0] = 50.0
    depth.update_metrics(metrics, prediction, target, torch.tensor([True]))
    values = depth.compute_metrics(metrics)
    assert float(values["abs_err"]) == 0.0 and float(values["delta1"]) == 1.0
    normals = built(NormalsTask)
    metrics = normals.build_metrics("val")
    up = torch.zeros(1, 3, 4, 4)
    up[:, 2] = 1
    normals.update_metrics(metrics, up, up, torch.tensor([True]))
    values = normals.compute_metrics(metrics)
    assert float(values["mean_angle"]) == pytest.approx(0.0, abs=1e-2)
    assert float(values["within_11_25"]) == 1.0
    assert set(values) == {"mean_angle", "median_angle", "within_11_25", "within_22_5",
                           "within_30"}


def test_predictions_resize_to_the_original_image_and_draw_as_pictures() -> None:
    depth, normals = built(DepthTask), built(NormalsTask)
    d = torch.rand(16, 16) + 0.5
    n = torch.nn.functional.normalize(torch.randn(3, 16, 16), dim=0)
    assert depth.resize_prediction(d, (16, 16), (24, 32)).shape == (24, 32)
    resized = normals.resize_prediction(n, (16, 16), (24, 32))
    assert resized.shape == (3, 24, 32)
    assert torch.allclose(resized.norm(dim=0), torch.ones(24, 32), atol=1e-5)
    image = torch.zeros(3, 24, 32, dtype=torch.uint8)
    for picture in (depth.draw(image, d), normals.draw(image, n)):
        assert picture.dtype == torch.uint8 and picture.shape == (3, 24, 32)
        assert int(picture.max()) > 0
    up = torch.zeros(3, 2, 2)
    up[2] = 1.0  # (0, 0, 1) -> (128, 128, 255) in the (n + 1) / 2 encoding
    assert normals.draw(torch.zeros(3, 2, 2, dtype=torch.uint8), up)[:, 0, 0].tolist() == [
        128, 128, 255]
    assert depth.prediction_to_json(torch.tensor([[1.0, 3.0]]))["mean"] == pytest.approx(2.0)


def test_regression_tasks_need_no_classes_and_refuse_bad_options() -> None:
    assert DepthTask().num_classes is None and NormalsTask().class_names == []
    with pytest.raises(ValueError, match=r"depth\.loss"):
        DepthTask(loss="l2")
    with pytest.raises(ValueError, match=r"normals\.loss"):
        NormalsTask(loss="dot")


def test_aspp_decoder_reads_the_last_backbone_map_and_no_pyramid() -> None:
    from mtl_lightning.module import MultiTaskModule

    task = DepthTask(decoder="aspp", decoder_channels=8, aspp_rates=(1, 2, 3))
    assert task.pyramid_levels == ()
    task.build_head(8, [8, 8, 16], [4, 8, 8])
    coarse = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2), torch.randn(2, 16, 2, 2)]
    out = task(Features(backbone=coarse, pyramid=[], strides=[4, 8, 8]), (16, 16))
    assert out.shape == (2, 16, 16)
    with pytest.raises(ValueError, match=r"normals\.decoder must be"):
        NormalsTask(decoder="unet")
    # a dilated backbone (output stride 8) with ASPP heads only: the model trains and every
    # parameter it holds receives a gradient (no neck is built for tasks that read none)
    model = MultiTaskModule(
        tasks={"depth": {"decoder": "aspp", "decoder_channels": 8},
               "normals": {"decoder": "aspp", "decoder_channels": 8}},
        task_info={"depth": {}, "normals": {}}, backbone="resnet18",
        backbone_kwargs={"output_stride": 8}, neck_channels=8)
    image = torch.randn(2, 3, 64, 64)
    outputs = model(image)
    assert outputs["depth"].shape == (2, 64, 64) and outputs["normals"].shape == (2, 3, 64, 64)
    assert model.architecture.strides[-1] == 8
    has = torch.tensor([True, True])
    loss = (model.tasks["depth"].loss(outputs["depth"], torch.ones(2, 64, 64), has)
            + model.tasks["normals"].loss(outputs["normals"], torch.ones(2, 3, 64, 64), has))
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused


def test_predict_files_and_overlay_rows_of_the_dense_tasks() -> None:
    from types import SimpleNamespace

    from mtl_lightning.callbacks.prediction_overlays import side_by_side

    depth, normals = built(DepthTask), built(NormalsTask)
    files = depth.prediction_files(torch.full((4, 5), 1.2346))
    assert files["depth.png"].dtype == np.uint16 and int(files["depth.png"][0, 0]) == 1235
    assert depth.prediction_to_json(torch.ones(2, 2))["png_scale"] == 0.001
    up = torch.zeros(3, 4, 5)
    up[2] = 1
    rgb = normals.prediction_files(up)["normals.png"]
    assert rgb.shape == (4, 5, 3) and rgb[0, 0].tolist() == [128, 128, 255]
    module = SimpleNamespace(tasks={"depth": depth, "normals": normals})
    image = torch.zeros(3, 4, 5, dtype=torch.uint8)
    picture = side_by_side(module, (image, {"depth": torch.ones(4, 5), "normals": up},
                                    {"depth": torch.ones(4, 5)}))
    # the image row (nothing drawn over it) and one row per dense task, 4-pixel gaps
    assert picture.shape == (3, 3 * 4 + 2 * 4, 5 + 4 + 5)
    assert int(picture[:, 2 * (4 + 4):, :5].max()) == 0  # normals truth missing: black
