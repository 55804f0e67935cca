"""Detection: target encoding, decoding, and its configurable post-processing."""

from __future__ import annotations

import torch

from mtl_lightning.models.neck import Features
from mtl_lightning.tasks import DetectionTask


def _task(**options: object) -> DetectionTask:
    task = DetectionTask(num_classes=3, **options)
    task.build_head(pyramid_channels=8, backbone_channels=[8, 8], strides=[4, 8])
    return task


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 20.0, 30.0], [30.0, 2.0, 62.0, 18.0]]),
         "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.tensor([[40.0, 40.0, 48.0, 49.0]]), "labels": torch.tensor([1])},
    ]


def _outputs_from_targets(task: DetectionTask, targets: list) -> dict[str, torch.Tensor]:
    """Perfect head outputs: logits of the encoded heatmap and the encoded box parameters."""
    encoded = task.encode(targets, 16, 16, torch.device("cpu"))
    heat = encoded["heatmap"].clamp(1e-6, 1 - 1e-6)
    return {"heatmap": torch.logit(heat), "box": encoded["box"]}


def test_encode_decode_round_trip_recovers_the_boxes() -> None:
    task = _task(score_threshold=0.5)
    targets = _targets()
    predictions = task.postprocess(_outputs_from_targets(task, targets))
    for prediction, target in zip(predictions, targets):
        assert len(prediction["boxes"]) == len(target["boxes"])
        order = torch.argsort(prediction["boxes"][:, 0])
        expected = torch.argsort(target["boxes"][:, 0])
        torch.testing.assert_close(prediction["boxes"][order], target["boxes"][expected])
        assert torch.equal(prediction["labels"][order], target["labels"][expected])
        assert torch.all(prediction["scores"] > 0.99)


def test_heatmap_peaks_are_one_at_the_object_centre_cells() -> None:
    task = _task()
    encoded = task.encode(_targets(), 16, 16, torch.device("cpu"))
    heatmap = encoded["heatmap"]
    # Image 0, object 0: centre (12, 18) px -> cell (x=3, y=4); class 0.
    assert heatmap[0, 0, 4, 3] == 1.0
    # Image 0, object 1: centre (46, 10) -> cell (11, 2); class 2.
    assert heatmap[0, 2, 2, 11] == 1.0
    assert heatmap[1].max() == 0.0  # no objects: no peaks
    assert int((heatmap == 1.0).sum()) == 3
    assert torch.equal(encoded["num_objects"], torch.tensor([2, 0, 1]))
    # Box weights are positive only near objects, and the image without objects has none.
    assert encoded["weight"][1].sum() == 0
    assert encoded["weight"][0, 4, 3] == 1.0


def test_postprocess_score_threshold_nms_and_max_detections() -> None:
    task = _task(score_threshold=0.3, max_detections=2, nms_iou=0.5)
    heatmap = torch.full((1, 3, 16, 16), -10.0)
    box = torch.zeros(1, 4, 16, 16)
    box[:, 2:] = torch.log(torch.tensor(2.0))  # 8 x 8 px boxes
    for x, score in [(2, 0.9), (8, 0.8), (12, 0.7), (5, 0.2)]:
        heatmap[0, 1, 5, x] = torch.logit(torch.tensor(score))
    prediction = task.postprocess({"heatmap": heatmap, "box": box})[0]
    assert prediction["scores"].tolist() == [torch.tensor(0.9).item(), torch.tensor(0.8).item()]
    assert prediction["labels"].tolist() == [1, 1]
    # Peaks 8 px apart with 24 x 24 px boxes (IoU 0.5): NMS at 0.4 keeps the better one;
    # a peak 16 px lower (IoU 0.2) survives; at nms_iou 0.6 all three survive.
    heatmap = torch.full((1, 3, 16, 16), -10.0)
    heatmap[0, 0, 5, 5] = 2.0
    heatmap[0, 0, 5, 7] = 1.0
    heatmap[0, 0, 9, 5] = 1.5
    box_big = torch.zeros(1, 4, 16, 16)
    box_big[:, 2:] = torch.log(torch.tensor(6.0))
    outputs = {"heatmap": heatmap, "box": box_big}
    strict = _task(score_threshold=0.1, nms_iou=0.4).postprocess(outputs)[0]
    torch.testing.assert_close(strict["scores"], torch.sigmoid(torch.tensor([2.0, 1.5])))
    loose = _task(score_threshold=0.1, nms_iou=0.6).postprocess(outputs)[0]
    assert len(loose["boxes"]) == 3


def test_encoding_is_vectorised_over_the_batch() -> None:
    """Encoding a batch equals encoding each image alone."""
    task = _task()
    targets = _targets()
    together = task.encode(targets, 16, 16, torch.device("cpu"))
    for i, target in enumerate(targets):
        alone = task.encode([target], 16, 16, torch.device("cpu"))
        for key in ("heatmap", "box", "weight"):
            torch.testing.assert_close(together[key][i], alone[key][0])


def test_detection_head_reads_the_finest_pyramid_level() -> None:
    task = _task()
    features = Features(
        backbone=[torch.randn(2, 8, 16, 16), torch.randn(2, 8, 8, 8)],
        pyramid=[torch.randn(2, 8, 16, 16), torch.randn(2, 8, 8, 8)],
        strides=[4, 8],
    )
    outputs = task(features, (64, 64))
    assert outputs["heatmap"].shape == (2, 3, 16, 16)
    assert outputs["box"].shape == (2, 4, 16, 16)


def _reference_postprocess(task: DetectionTask, outputs: dict) -> list[dict]:
    """Per image, written plainly: peaks, top-k, threshold, class-wise NMS, the best
    ``max_detections``. The batched implementation must give exactly this."""
    from torchvision.ops import batched_nms

    results = []
    for i in range(len(outputs["heatmap"])):
        one = {key: value[i:i + 1] for key, value in outputs.items()}
        heat = one["heatmap"].float().sigmoid()
        peaks = heat * (heat == torch.nn.functional.max_pool2d(heat, 3, stride=1, padding=1))
        height, width = heat.shape[-2:]
        scores, index = peaks.flatten(1).topk(min(task.pre_nms_topk, peaks[0].numel()))
        scores, index = scores[0], index[0]
        boxes = task.decode_boxes(one["box"])[0][index % (height * width)]
        labels = index // (height * width)
        keep = scores > task.score_threshold
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        kept = batched_nms(boxes, scores, labels, task.nms_iou)[: task.max_detections]
        results.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]})
    return results


def test_batched_postprocess_equals_the_per_image_reference() -> None:
    torch.manual_seed(0)
    task = _task(score_threshold=0.2, max_detections=5, nms_iou=0.5, pre_nms_topk=40)
    outputs = {"heatmap": torch.randn(6, 3, 16, 16) * 2, "box": torch.randn(6, 4, 16, 16) * 0.3}
    outputs["heatmap"][2] = -20.0  # an image without a detection
    batched, reference = task.postprocess(outputs), _reference_postprocess(task, outputs)
    assert [len(r["scores"]) for r in batched] == [len(r["scores"]) for r in reference]
    assert len(batched[2]["scores"]) == 0 and max(len(r["scores"]) for r in batched) == 5
    for got, expected in zip(batched, reference):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(got[key], expected[key])


def test_crowd_regions_are_not_training_targets() -> None:
    """An ``iscrowd`` box gives the same targets as no box at all."""
    task = _task()
    crowd = [{"boxes": torch.tensor([[4.0, 6.0, 20.0, 30.0], [30.0, 2.0, 62.0, 18.0]]),
              "labels": torch.tensor([0, 2]), "iscrowd": torch.tensor([0, 1])},
             {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    plain = [{"boxes": crowd[0]["boxes"][:1], "labels": crowd[0]["labels"][:1]}, crowd[1]]
    with_crowd = task.encode(crowd, 16, 16, torch.device("cpu"))
    without = task.encode(plain, 16, 16, torch.device("cpu"))
    for key in ("heatmap", "box", "weight", "num_objects"):
        torch.testing.assert_close(with_crowd[key], without[key])
    outputs = _outputs_from_targets(task, plain)
    has = torch.tensor([True, True])
    torch.testing.assert_close(task.loss(outputs, crowd, has), task.loss(outputs, plain, has))


def test_the_loss_encodes_without_box_parameters_and_scores_perfect_boxes_as_before() -> None:
    """``encode(box_params=False)`` (what the loss asks for) gives the same targets minus the
    per-cell box parameters, and the loss of perfect outputs is still its box-free minimum."""
    task = _task()
    full = task.encode(_targets(), 16, 16, torch.device("cpu"))
    lean = task.encode(_targets(), 16, 16, torch.device("cpu"), box_params=False)
    assert "box" in full and "box" not in lean
    assert lean.keys() == full.keys() - {"box"}
    for key, value in lean.items():
        torch.testing.assert_close(value, full[key])
    perfect = _outputs_from_targets(task, _targets())
    has = torch.ones(3, dtype=torch.bool)
    shifted = {**perfect, "box": perfect["box"] + 0.5}
    assert task.loss(perfect, _targets(), has) < task.loss(shifted, _targets(), has)


def test_decoding_chosen_cells_equals_decoding_every_cell_then_picking() -> None:
    task = _task()
    box = torch.randn(2, 4, 6, 7)
    cells = torch.tensor([[0, 41, 5], [17, 17, 40]])
    everything = task.decode_boxes(box)
    picked = torch.gather(everything, 1, cells[..., None].expand(-1, -1, 4))
    torch.testing.assert_close(task.decode_boxes(box, cells), picked)


def test_perfect_box_parameters_cost_no_box_loss() -> None:
    """Each positive cell's decoded box is compared with its own object's box: perfect
    parameters give a GIoU loss of zero (a cell paired with another cell's target would not)."""
    task = _task()
    perfect = _outputs_from_targets(task, _targets())
    has = torch.ones(3, dtype=torch.bool)
    with_boxes = task.loss(perfect, _targets(), has)
    task.box_loss_weight = 0.0
    torch.testing.assert_close(with_boxes, task.loss(perfect, _targets(), has))
    task.box_loss_weight = 1.0
    rolled = {**perfect, "box": perfect["box"].roll(1, dims=-1)}
    assert task.loss(rolled, _targets(), has) > with_boxes + 1e-3
