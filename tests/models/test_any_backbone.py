"""Any timm backbone: channels-last Swin, plain ViTs through a simple feature pyramid, models
built for one input size, weights files that do not fit, and one sentence for each error."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from mtl_lightning.models.architectures import build_architecture
from mtl_lightning.models.backbone import Backbone, BackboneError
from mtl_lightning.models.simple_feature_pyramid import SimpleFeaturePyramid
from mtl_lightning.module import CheckpointMismatchError, MultiTaskModule

TASK_INFO = {
    "classification": {"num_classes": 3},
    "segmentation": {"num_classes": 4},
    "detection": {"num_classes": 3},
}
VIT = "vit_tiny_patch16_224"
SHALLOW = {"depth": 4}  # a 4-block ViT-Tiny: the same code paths, a quarter of the cost


def test_swin_features_are_channels_first_and_feed_every_head() -> None:
    """timm's Swin returns NHWC maps; the neck must get NCHW ones with feature_info's widths."""
    model = MultiTaskModule(task_info=TASK_INFO, backbone="swin_tiny_patch4_window7_224",
                            backbone_kwargs={"depths": [1, 1, 1, 1]}, neck_channels=16).eval()
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.backbone(model.normalize(image))
        outputs = model(image)
    assert [tuple(m.shape) for m in maps] == [(2, 96, 16, 16), (2, 192, 8, 8), (2, 384, 4, 4),
                                             (2, 768, 2, 2)]
    assert model.backbone.channels == [96, 192, 384, 768]
    assert outputs["segmentation"].shape == (2, 4, 64, 64)
    assert outputs["detection"]["heatmap"].shape == (2, 3, 16, 16)


def test_a_plain_vit_gets_a_pyramid_at_strides_4_to_32() -> None:
    model = MultiTaskModule(task_info=TASK_INFO, backbone=VIT, backbone_kwargs=SHALLOW,
                            neck_channels=16).eval()
    backbone = model.backbone
    assert backbone.plain and isinstance(backbone.pyramid, SimpleFeaturePyramid)
    assert backbone.reductions == [4, 8, 16, 32]
    assert backbone.channels == [48, 96, 192, 192]  # ViTDet: dim/4, dim/2, dim, dim
    image = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        tokens = backbone.encode(model.normalize(image))
        maps = backbone.adapt(tokens)
        outputs = model(image)
    assert [tuple(t.shape) for t in tokens] == [(2, 192, 4, 6)]  # the last block's tokens
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert outputs["segmentation"].shape == (2, 4, 64, 96)
    assert outputs["detection"]["heatmap"].shape == (2, 3, 16, 24)
    # The pyramid has parameters of its own, and learns with the heads.
    assert sum(p.numel() for p in backbone.adapter_parameters()) > 0


def test_four_vit_blocks_feed_one_level_each_and_later_blocks_are_pruned() -> None:
    backbone = Backbone(VIT, vit_blocks=[0, 1, 2, 3], model_kwargs={"depth": 6})
    assert len(backbone.body.model.blocks) == 4  # blocks 4 and 5 are never read: gone
    tokens = backbone.encode(torch.rand(1, 3, 32, 32))
    assert len(tokens) == 4
    levels = backbone.adapt(tokens)
    # Level i comes from block i: changing block 3's tokens moves only the coarsest level.
    changed = backbone.adapt([*tokens[:3], tokens[3] + 1])
    for i in range(3):
        assert torch.equal(levels[i], changed[i])
    assert not torch.equal(levels[3], changed[3])
    with pytest.raises(BackboneError, match="one or four blocks"):
        Backbone(VIT, vit_blocks=[0, 1], model_kwargs=SHALLOW)


def test_input_sizes_a_model_cannot_take_are_one_sentence() -> None:
    """A ViT takes any multiple of its patch size (timm's dynamic_img_size); a model built
    for one size (Hiera) takes model.image_size, and says so when fed another size."""
    vit = Backbone(VIT, model_kwargs=SHALLOW)
    with pytest.raises(BackboneError, match="multiple of its patch size 16"):
        vit(torch.rand(1, 3, 40, 40))
    hiera = Backbone("hiera_tiny_224")
    with pytest.raises(BackboneError, match=r"built for 224x224 inputs, got 64x64; set "
                                            r"--model.image_size 64"):
        hiera(torch.rand(1, 3, 64, 64))
    sized = Backbone("hiera_tiny_224", image_size=64)
    assert [m.shape[-1] for m in sized(torch.rand(1, 3, 64, 64))] == [16, 8, 4, 2]


def test_a_patch_size_the_pyramid_cannot_use_names_the_option() -> None:
    with pytest.raises(BackboneError, match=r"patch size 14.*backbone_kwargs \{patch_size: 16\}"):
        Backbone("eva02_tiny_patch14_224", model_kwargs={"depth": 2})


def test_vit_weights_from_a_local_file(tmp_path: Path) -> None:
    """A state dict the test writes itself loads into the ViT as it does into a CNN."""
    source = timm.create_model(VIT, pretrained=False, **SHALLOW)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.uniform_(-0.1, 0.1)
    weights = tmp_path / "vit.pth"
    torch.save(source.state_dict(), weights)
    backbone = Backbone(VIT, pretrained_file=str(weights), model_kwargs=SHALLOW)
    loaded = backbone.body.model.state_dict()
    for key in ("pos_embed", "patch_embed.proj.weight", "blocks.3.mlp.fc2.weight"):
        assert torch.equal(loaded[key], source.state_dict()[key]), key
    fresh = Backbone(VIT, model_kwargs=SHALLOW).body.model.state_dict()
    assert not torch.equal(fresh["patch_embed.proj.weight"], loaded["patch_embed.proj.weight"])


@pytest.mark.parametrize(("content", "message"), [
    ("resnet", "holds no weights of 'vit_tiny_patch16_224'"),
    ("text", "could not be read as a state dict"),
    ("list", "is not a state dict"),
])
def test_a_weights_file_of_something_else_is_one_sentence(content: str, message: str,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    if content == "resnet":
        torch.save(timm.create_model("resnet10t").state_dict(), path)
    elif content == "text":
        path.write_text("not weights at all")
    else:
        torch.save({"weights": [1, 2, 3]}, path)
    with pytest.raises(BackboneError, match=message) as error:
        Backbone(VIT, pretrained_file=str(path), model_kwargs=SHALLOW)
    assert "evil.pth" in str(error.value) and "\n" not in str(error.value)
    assert "features_only" not in str(error.value)


def test_vit_blocks_on_a_hierarchical_model_is_refused() -> None:
    with pytest.raises(BackboneError, match="applies to plain ViTs"):
        Backbone("resnet10t", vit_blocks=[-1])


def test_soft_sharing_says_which_backbones_it_takes() -> None:
    """Cross-stitch mixes channels-first stage maps stage by stage: a plain ViT or Swin gets
    one sentence; MTAN and the ensemble take a ViT."""
    for name, kind in [(VIT, "a plain ViT"), ("swin_tiny_patch4_window7_224", "channels-last")]:
        with pytest.raises(BackboneError, match=f"is {kind}.*hard, mtan or ensemble"):
            build_architecture("cross_stitch", ["a", "b"],
                               lambda name=name: Backbone(name, model_kwargs=(
                                   SHALLOW if name == VIT else {"depths": [1, 1, 1, 1]})), 16)
    for architecture in ("mtan", "ensemble"):
        model = MultiTaskModule(task_info=TASK_INFO, backbone=VIT, backbone_kwargs=SHALLOW,
                                neck_channels=8, architecture=architecture).eval()
        with torch.no_grad():
            outputs = model(torch.rand(1, 3, 32, 32))
        assert outputs["segmentation"].shape == (1, 4, 32, 32), architecture


def test_a_checkpoint_of_other_vit_blocks_is_one_sentence(tmp_path: Path) -> None:
    model = MultiTaskModule(task_info=TASK_INFO, backbone=VIT, backbone_kwargs=SHALLOW,
                            neck_channels=8, vit_blocks=[1])
    path = tmp_path / "vit.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": "2.5.0"}, path)
    other = MultiTaskModule(task_info=TASK_INFO, backbone=VIT, backbone_kwargs=SHALLOW,
                            neck_channels=8)
    with pytest.raises(CheckpointMismatchError, match="its vit_blocks is \\[1\\]"):
        other.on_load_checkpoint(torch.load(path, weights_only=True))
