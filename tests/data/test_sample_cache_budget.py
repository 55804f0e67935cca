"""``data.cache_budget``: a split whose decoded samples would exceed the budget is refused
before it is decoded, in one sentence naming the options; the estimate is close to what the
cache then holds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtl_lightning.data import ScenesDataModule
from mtl_lightning.data import sample_cache_budget as budget_module
from mtl_lightning.data.sample_cache_budget import (
    CacheBudgetError,
    check_cache_budget,
    estimate_bytes,
)
from mtl_lightning.data.sources.multisource import MultiSourceDataModule
from tests.conftest import TINY_SCENES
from tests.data.test_multisource import _three_sources


def scenes(root: Path, **options) -> ScenesDataModule:
    data = ScenesDataModule(root=str(root), cache_samples=True, **{**TINY_SCENES, **options})
    data.prepare_data()
    data.setup()
    return data


def test_a_split_over_the_budget_is_refused_before_decoding(scenes_root: Path,
                                                            monkeypatch) -> None:
    # 256 KB available: the 16 val samples of 64 px need about 16 KB each
    monkeypatch.setattr(budget_module, "available_memory_bytes", lambda: 2**18)
    data = scenes(scenes_root, cache_budget=0.5)
    with pytest.raises(CacheBudgetError) as refused:
        data.val_dataloader()
    message = str(refused.value)
    assert "data.cache_samples" in message and "data.cache_budget=0.5" in message
    assert "the val split (16 samples)" in message
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence
    assert data.datasets["val"]._cache is None  # nothing was decoded into the cache


def test_a_budget_of_zero_switches_the_check_off(scenes_root: Path, monkeypatch) -> None:
    monkeypatch.setattr(budget_module, "available_memory_bytes", lambda: 1)
    data = scenes(scenes_root, cache_budget=0)
    data.val_dataloader()
    assert data.datasets["val"]._cache is not None


def test_within_the_budget_the_split_is_cached(scenes_root: Path, monkeypatch) -> None:
    monkeypatch.setattr(budget_module, "available_memory_bytes", lambda: 2**34)
    data = scenes(scenes_root)
    data.val_dataloader()
    assert len(data.datasets["val"]._cache) == 16


def test_the_estimate_is_close_to_what_the_cache_holds(scenes_root: Path) -> None:
    data = scenes(scenes_root)
    dataset = data.datasets["train"]
    estimate = estimate_bytes(dataset.decoded_sample, len(dataset))
    held = dataset.cache_in_memory() * 2**20
    assert estimate == pytest.approx(held, rel=0.15)


def test_each_process_of_the_machine_counts(monkeypatch) -> None:
    parts = [(lambda i: {"x": torch.zeros(256, dtype=torch.uint8)}, 4096)]  # 1 MB
    assert check_cache_budget(parts, "the train split", 0.5, available=3 * 2**20) == 2**20
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(CacheBudgetError, match="2 MB for the train split"):
        check_cache_budget(parts, "the train split", 0.5, available=3 * 2**20)


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match=r"data\.cache_budget is -1"):
        check_cache_budget([], "the train split", -1)


def test_multisource_refuses_the_whole_split(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(budget_module, "available_memory_bytes", lambda: 2**10)
    data = MultiSourceDataModule(sources=_three_sources(tmp_path), cache_samples=True,
                                 image_size=64, batch_size=2, num_workers=0)
    data.prepare_data()
    data.setup("fit")
    with pytest.raises(CacheBudgetError, match=r"the train split \(\d+ samples\)"):
        data.train_dataloader()
    assert all(d._cache is None for d in data.source_datasets["train"].values())
