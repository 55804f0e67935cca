"""The loader's speed-ups change how a batch travels, never what it holds: packed detection
targets, transforms that leave ``has`` and ``meta`` alone, and a frozen garbage collector."""

from __future__ import annotations

import gc
import pickle

import torch
from torch.utils.data import DataLoader

from mtl_lightning.callbacks import FrozenGarbageCollector
from mtl_lightning.data.collate import TargetList, collate_multitask
from mtl_lightning.data.transforms import SampleTransform
from mtl_lightning.data.workers import freeze_in_worker
from mtl_lightning.module import MultiTaskModule


def targets() -> TargetList:
    return TargetList([
        {"boxes": torch.tensor([[0.0, 1.0, 5.0, 6.0], [2.0, 2.0, 9.0, 9.0]]),
         "labels": torch.tensor([1, 2]), "iscrowd": torch.tensor([False, True])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
         "iscrowd": torch.zeros(0, dtype=torch.bool)},
        {"boxes": torch.tensor([[3.0, 3.0, 4.0, 4.0]]), "labels": torch.tensor([0]),
         "iscrowd": torch.tensor([False])},
    ])


def assert_same(actual: list, expected: list) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert list(got) == list(want)
        for key in want:
            assert got[key].dtype == want[key].dtype
            assert torch.equal(got[key], want[key]), key


def test_target_list_is_pickled_as_one_tensor_per_key() -> None:
    original = targets()
    restored = pickle.loads(pickle.dumps(original))
    assert isinstance(restored, TargetList)
    assert_same(restored, original)
    # one storage per key: the images' boxes are views of the same packed tensor
    storages = {d["boxes"].untyped_storage().data_ptr() for d in restored}
    assert len(storages) == 1


def test_a_target_list_that_cannot_be_packed_is_pickled_item_by_item() -> None:
    irregular = TargetList([{"boxes": torch.zeros(1, 4)}, {"labels": torch.zeros(1)}])
    restored = pickle.loads(pickle.dumps(irregular))
    assert list(restored[0]) == ["boxes"] and list(restored[1]) == ["labels"]
    scalars = TargetList([{"score": torch.tensor(1.0)}, {"score": torch.tensor(2.0)}])
    assert [float(d["score"]) for d in pickle.loads(pickle.dumps(scalars))] == [1.0, 2.0]


def test_batches_from_a_worker_equal_batches_built_in_process(tiny_scenes) -> None:
    dataset = tiny_scenes.datasets["val"]
    in_process = DataLoader(dataset, batch_size=8, collate_fn=collate_multitask)
    worker = DataLoader(dataset, batch_size=8, collate_fn=collate_multitask, num_workers=1,
                        worker_init_fn=freeze_in_worker)
    for expected, actual in zip(in_process, worker):
        assert isinstance(actual["targets"]["detection"], TargetList)
        assert_same(actual["targets"]["detection"], expected["targets"]["detection"])
        assert torch.equal(actual["image"], expected["image"])
        assert torch.equal(actual["targets"]["segmentation"],
                           expected["targets"]["segmentation"])
        assert actual["meta"] == expected["meta"]


def test_only_image_and_targets_go_through_the_transforms(tiny_scenes) -> None:
    seen: list[set[str]] = []

    def pipeline(structure: dict) -> dict:
        seen.append(set(structure))
        return {key: value for key, value in structure.items()}

    meta, has = {"path": "x.png", "orig_size": (4, 4)}, {"detection": True}
    sample = {"image": torch.zeros(3, 4, 4), "targets": {}, "meta": meta, "has": has}
    out = SampleTransform(pipeline)(sample)
    assert seen == [{"image", "targets"}]
    assert out["meta"] is meta and out["has"] is has
    real = tiny_scenes.datasets["train"][0]  # the real pipeline still transforms the image
    assert real["image"].dtype == torch.float32
    assert real["image"].shape[-2:] == (tiny_scenes.image_size, tiny_scenes.image_size)


def test_worker_init_freezes_the_inherited_objects() -> None:
    try:
        freeze_in_worker(0)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_the_callback_freezes_for_a_run_and_unfreezes_after_it() -> None:
    callback = FrozenGarbageCollector()
    try:
        callback.setup(None, None, "fit")
        assert gc.get_freeze_count() > 0
        callback.teardown(None, None, "fit")
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
    FrozenGarbageCollector(enabled=False).setup(None, None, "fit")
    assert gc.get_freeze_count() == 0


def test_training_metrics_are_updated_on_every_nth_batch_only(tiny_scenes, tiny_batch) -> None:
    model = MultiTaskModule(task_info=tiny_scenes.task_info, neck_channels=16,
                            train_metrics_every=3)
    model.log = lambda *args, **kwargs: None
    model.balancer.wants_statistics = lambda step: False  # no trainer: no gradient statistics
    metric = model.metrics["train_segmentation"]
    model.training_step(tiny_batch, 1)
    assert not any(m.update_called for m in metric.values())
    model.training_step(tiny_batch, 3)
    assert all(m.update_called for m in metric.values())
