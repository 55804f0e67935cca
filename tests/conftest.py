"""Shared fixtures: a tiny Scenes dataset generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtl_lightning.data import ScenesDataModule

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = REPO / "configs" / "smoke.yaml"
FRUITS_NUTS = REPO.parent / "shared" / "data" / "fruits_nuts"

TINY_SCENES = dict(
    image_size=64, num_train=32, num_val=16, num_test=16, num_classes=4, batch_size=8,
    num_workers=0, generator_workers=0,
)


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def scenes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scenes")


@pytest.fixture(scope="session")
def tiny_scenes(scenes_root: Path) -> ScenesDataModule:
    """A prepared and set-up Scenes data module of 64 px images."""
    data = ScenesDataModule(root=str(scenes_root), **TINY_SCENES)
    data.prepare_data()
    data.setup()
    return data


@pytest.fixture(scope="session")
def tiny_batch(tiny_scenes: ScenesDataModule) -> dict:
    """One deterministic (evaluation-transformed) batch of 8 images."""
    return next(iter(tiny_scenes.val_dataloader()))


def count_forward_calls(model: torch.nn.Module) -> list[int]:
    """Wrap ``model.forward`` so that every call appends its batch size to the returned list
    (the validation tests' check that no callback runs a forward pass of its own)."""
    calls: list[int] = []
    forward = model.forward

    def counting(image: torch.Tensor) -> dict:
        calls.append(len(image))
        return forward(image)

    model.forward = counting
    return calls
