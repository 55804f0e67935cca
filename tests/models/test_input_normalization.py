"""The backbone's own input statistics: from timm's pretrained config unless the user sets them,
applied by the model to [0, 1] images, and saved with every checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import tv_tensors

from mtl_lightning.data.transforms import eval_transforms
from mtl_lightning.models.input_normalization import MEAN_KEY, STD_KEY
from mtl_lightning.module import MultiTaskModule

INFO = {"classification": {"num_classes": 3}}
SMALL_VIT = {"depth": 2}


def _stats(model: MultiTaskModule) -> list[float]:
    """The model's mean, then its std."""
    return model.normalize.mean.flatten().tolist() + model.normalize.std.flatten().tolist()


def test_statistics_come_from_the_backbones_pretrained_config() -> None:
    cnn = MultiTaskModule(task_info=INFO, backbone="resnet10t", neck_channels=8)
    vit = MultiTaskModule(task_info=INFO, backbone="vit_tiny_patch16_224",
                          backbone_kwargs=SMALL_VIT, neck_channels=8)
    assert _stats(cnn) == pytest.approx([*IMAGENET_DEFAULT_MEAN, *IMAGENET_DEFAULT_STD])
    assert _stats(vit) == pytest.approx([0.5] * 6)  # timm's config for this ViT
    assert vit.image_interpolation == "bicubic"
    user = MultiTaskModule(task_info=INFO, backbone="resnet10t", neck_channels=8,
                           image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    assert _stats(user) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert user.hparams.image_mean == pytest.approx([0.1, 0.2, 0.3])


def test_the_model_normalises_its_zero_to_one_input() -> None:
    model = MultiTaskModule(task_info=INFO, backbone="resnet10t", neck_channels=8,
                            image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).eval()
    image = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.architecture((image - mean) / std).features["classification"]
        expected = model.tasks["classification"](expected, (32, 32))
        got = model(image)["classification"]
    torch.testing.assert_close(got, expected)


def test_the_data_pipeline_hands_over_images_in_zero_one(tiny_scenes) -> None:
    """Scaled to [0, 1], not normalised: the model applies its backbone's statistics."""
    white = {"image": tv_tensors.Image(torch.full((3, 40, 40), 255, dtype=torch.uint8)),
             "targets": {}}
    out = eval_transforms(32, ("classification",))(white)["image"]
    assert out.dtype == torch.float32 and torch.equal(out, torch.ones(3, 32, 32))
    batch = next(iter(tiny_scenes.val_dataloader()))
    assert float(batch["image"].min()) >= 0.0 and float(batch["image"].max()) <= 1.0


def test_a_checkpoint_records_the_statistics_and_a_legacy_one_gets_imagenets(
        tmp_path: Path) -> None:
    model = MultiTaskModule(task_info=INFO, backbone="vit_tiny_patch16_224",
                            backbone_kwargs=SMALL_VIT, neck_channels=8)
    state = model.state_dict()
    assert state[MEAN_KEY].flatten().tolist() == pytest.approx([0.5] * 3)
    # A checkpoint from before the model normalised (its data pipeline used ImageNet's
    # statistics) has no such buffers: it loads with ImageNet's.
    legacy = {k: v for k, v in state.items() if k not in (MEAN_KEY, STD_KEY)}
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": legacy, "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": "2.5.0"}, path)
    loaded = MultiTaskModule.load_from_checkpoint(path, weights_only=True)
    assert _stats(loaded) == pytest.approx([*IMAGENET_DEFAULT_MEAN, *IMAGENET_DEFAULT_STD])


def test_bad_statistics_are_one_sentence() -> None:
    with pytest.raises(ValueError, match="one value per image channel"):
        MultiTaskModule(task_info=INFO, backbone="resnet10t", neck_channels=8,
                        image_mean=[0.5, 0.5], image_std=[0.5, 0.5, 0.5])
