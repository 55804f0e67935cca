"""``data.cache_samples``: samples decoded once at ``setup`` read back exactly as from disk,
through the transforms and through loader workers, and a reader cannot change the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from mtl_lightning.data import ScenesDataModule
from mtl_lightning.data.collate import collate_multitask
from mtl_lightning.data.sources.multisource import MultiSourceDataModule
from tests.conftest import TINY_SCENES
from tests.data.test_multisource import _three_sources


def assert_same_sample(got: dict, want: dict) -> None:
    assert torch.equal(got["image"], want["image"])
    assert got["has"] == want["has"] and got["meta"] == want["meta"]
    for task, target in want["targets"].items():
        if isinstance(target, dict):
            for key, value in target.items():
                assert torch.equal(got["targets"][task][key], value), (task, key)
        else:
            assert torch.equal(got["targets"][task], target), task


@pytest.fixture(scope="module")
def modules(scenes_root: Path) -> tuple[ScenesDataModule, ScenesDataModule]:
    """The same tiny Scenes data, cached and read from disk."""
    pair = []
    for cache in (True, False):
        data = ScenesDataModule(root=str(scenes_root), cache_samples=cache, **TINY_SCENES)
        data.prepare_data()
        data.setup()
        for split in ("train", "val", "test"):
            data._loader(split, shuffle=False, batch_size=8)
        pair.append(data)
    return pair[0], pair[1]


def test_a_split_is_decoded_when_its_first_loader_is_made(scenes_root: Path) -> None:
    data = ScenesDataModule(root=str(scenes_root), cache_samples=True, **TINY_SCENES)
    data.prepare_data()
    data.setup()
    assert all(data.datasets[split]._cache is None for split in ("train", "val", "test"))
    data.val_dataloader()
    cache = data.datasets["val"]._cache
    assert len(cache) == len(data.datasets["val"])
    data.val_dataloader()
    assert data.datasets["val"]._cache is cache  # once
    assert data.datasets["train"]._cache is None  # a split that is not read is not decoded


def test_without_the_option_nothing_is_cached(modules) -> None:
    plain = modules[1]
    plain.val_dataloader()
    assert plain.datasets["val"]._cache is None


def test_cached_samples_equal_samples_read_from_disk(modules) -> None:
    cached, plain = modules
    for index in range(len(plain.datasets["val"])):  # deterministic evaluation transforms
        assert_same_sample(cached.datasets["val"][index], plain.datasets["val"][index])
    torch.manual_seed(3)
    augmented = [cached.datasets["train"][i] for i in range(6)]
    torch.manual_seed(3)
    for index, sample in enumerate(augmented):  # the same random flips
        assert_same_sample(sample, plain.datasets["train"][index])


def test_a_reader_cannot_change_the_cache(modules) -> None:
    dataset = modules[0].datasets["val"]
    index = next(i for i in range(len(dataset))
                 if len(dataset[i]["targets"]["detection"]["labels"]))
    first = dataset[index]
    first["has"]["segmentation"] = not first["has"]["segmentation"]
    first["meta"]["image_id"] = -1
    first["targets"]["detection"]["labels"] = torch.zeros(0)
    again = dataset[index]
    assert again["has"]["segmentation"] != first["has"]["segmentation"]
    assert again["meta"]["image_id"] != -1
    assert len(again["targets"]["detection"]["labels"]) > 0


def test_a_worker_reads_the_cache_it_inherits(modules) -> None:
    cached, plain = modules
    worker = DataLoader(cached.datasets["val"], batch_size=8, num_workers=1,
                        collate_fn=collate_multitask)
    in_process = DataLoader(plain.datasets["val"], batch_size=8, collate_fn=collate_multitask)
    for got, want in zip(worker, in_process):
        assert torch.equal(got["image"], want["image"])
        assert torch.equal(got["targets"]["segmentation"], want["targets"]["segmentation"])


def test_several_sources_cache_each_source_when_its_loader_is_made(tmp_path: Path) -> None:
    # Several sources used to refuse the cache; each source is now cached like one COCO set
    # (tests/data/test_multisource.py compares the cached batches with uncached ones).
    data = MultiSourceDataModule(sources=_three_sources(tmp_path), cache_samples=True,
                                 num_workers=0, image_size=32)
    data.setup()
    data.val_dataloader()
    assert all(d._cache is not None for d in data.source_datasets["val"].values())
    assert all(d._cache is None for d in data.source_datasets["train"].values())
