"""Hard sharing, cross-stitch, MTAN and ensembles: one interface, the same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtl_lightning.balancing import PCGrad
from mtl_lightning.cli import run_cli
from mtl_lightning.models import Backbone, BackboneError
from mtl_lightning.models.architectures import (
    ARCHITECTURES,
    CrossStitchUnit,
    build_architecture,
)
from mtl_lightning.module import MultiTaskModule

from ..conftest import SMOKE_CONFIG

INFO = {
    "classification": {"num_classes": 3, "class_names": ["a", "b", "c"]},
    "segmentation": {"num_classes": 3, "class_names": ["background", "x", "y"]},
    "detection": {"num_classes": 2, "class_names": ["x", "y"]},
}
SMALL = {"channels": [16, 16, 32, 32], "stem_width": 16}


def _model(architecture: str, **kwargs) -> MultiTaskModule:
    return MultiTaskModule(task_info=INFO, neck_channels=16, backbone_kwargs=SMALL,
                           architecture=architecture, **kwargs)


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_every_architecture_gives_the_same_outputs(architecture: str) -> None:
    reference = _model("hard").eval()(torch.randn(2, 3, 64, 64))
    model = _model(architecture).eval()
    outputs = model(torch.randn(2, 3, 64, 64))
    assert set(outputs) == set(reference)
    for task, output in outputs.items():
        expected = reference[task]
        if isinstance(output, dict):
            assert {k: v.shape for k, v in output.items()} == {
                k: v.shape for k, v in expected.items()}
        else:
            assert output.shape == expected.shape


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_every_parameter_learns_from_the_losses(architecture: str, tiny_scenes,
                                                tiny_batch: dict) -> None:
    model = MultiTaskModule(task_info=tiny_scenes.task_info, neck_channels=16,
                            backbone_kwargs=SMALL, architecture=architecture).train()
    # The module's own task losses: a task-interaction decoder's initial heads learn from
    # the deep-supervision term the module adds to their task's loss.
    losses, _ = model._task_losses(tiny_batch, "train", update_metrics=False)
    sum(losses.values()).backward()
    silent = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert silent == []


def test_parameter_counts_follow_the_sharing() -> None:
    counts = {a: sum(p.numel() for p in _model(a).architecture.parameters())
              for a in ARCHITECTURES}
    hard = counts["hard"]
    assert counts["ensemble"] > 2.5 * hard  # one backbone and neck per task
    assert counts["cross_stitch"] > counts["ensemble"]  # plus the stitch units
    assert hard < counts["mtan"] < counts["ensemble"]  # attention modules only


def test_cross_stitch_unit_mixes_streams_with_its_initial_weights() -> None:
    unit = CrossStitchUnit(num_tasks=2, channels=3, self_weight=0.9, other_weight=0.1)
    a, b = torch.ones(1, 3, 2, 2), torch.full((1, 3, 2, 2), 2.0)
    mixed_a, mixed_b = unit([a, b])
    assert torch.allclose(mixed_a, torch.full_like(a, 0.9 + 0.2))
    assert torch.allclose(mixed_b, torch.full_like(b, 0.1 + 1.8))


def test_cross_stitch_default_other_weight_and_unsupported_backbones() -> None:
    model = _model("cross_stitch", architecture_options={"self_weight": 0.8})
    alpha = model.architecture.stitches[0].alpha
    assert torch.allclose(alpha[0, 0], torch.tensor(0.8))
    assert torch.allclose(alpha[0, 1], torch.tensor(0.1))  # (1 - 0.8) / (3 - 1)
    with pytest.raises(BackboneError, match="stage by stage"):
        build_architecture("cross_stitch", ["a", "b"], lambda: Backbone("mobilenetv3_small_050"),
                           16)


def test_unknown_architecture_and_options_are_one_sentence() -> None:
    with pytest.raises(ValueError, match=r"Unknown model\.architecture 'soft'.*hard"):
        _model("soft")
    with pytest.raises(ValueError, match="architecture_options"):
        _model("mtan", architecture_options={"self_weight": 0.9})


def test_representation_balancing_needs_a_shared_representation() -> None:
    with pytest.raises(ValueError, match="source: parameters"):
        _model("cross_stitch", balancer=PCGrad(source="representation"))
    _model("cross_stitch", balancer=PCGrad(source="parameters"))
    _model("mtan", balancer=PCGrad(source="representation"))


def test_ensemble_members_load_from_single_task_checkpoints(tmp_path: Path) -> None:
    single = MultiTaskModule(task_info=INFO, tasks={"segmentation": None}, neck_channels=16,
                             backbone_kwargs=SMALL)
    path = tmp_path / "segmentation.ckpt"
    torch.save({"state_dict": single.state_dict(), "hyper_parameters": dict(single.hparams)},
               path)
    ensemble = _model("ensemble", architecture_options={"members": {"segmentation": str(path)}})
    member = ensemble.architecture.backbones["segmentation"].state_dict()
    for key, value in single.architecture.backbone.state_dict().items():
        assert torch.equal(member[key], value)
    head = ensemble.tasks["segmentation"].state_dict()
    for key, value in single.tasks["segmentation"].state_dict().items():
        assert torch.equal(head[key], value)
    image = torch.randn(1, 3, 64, 64)
    single.eval(), ensemble.eval()
    assert torch.allclose(single(image)["segmentation"], ensemble(image)["segmentation"],
                          atol=1e-5)


def test_ensemble_member_checkpoint_without_the_task_is_refused(tmp_path: Path) -> None:
    other = MultiTaskModule(task_info=INFO, tasks={"classification": None}, neck_channels=16,
                            backbone_kwargs=SMALL)
    path = tmp_path / "classification.ckpt"
    torch.save({"state_dict": other.state_dict()}, path)
    with pytest.raises(ValueError, match="segmentation head"):
        _model("ensemble", architecture_options={"members": {"segmentation": str(path)}})


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["mtan", "cross_stitch", "ensemble"])
def test_one_flag_switches_the_smoke_run(architecture: str, tmp_path: Path,
                                         scenes_root: Path) -> None:
    extra = []
    if architecture == "cross_stitch":  # gradient balancing at the parameters works too
        extra = ["--model.balancer", "configs/balancer/pcgrad.yaml"]
    cli = run_cli([
        "fit", "--config", str(SMOKE_CONFIG),
        "--model", f"configs/model/{architecture}.yaml", *extra,
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--data.init_args.root", str(scenes_root), "--data.init_args.image_size", "32",
        "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
        "--test_after_fit", "false", "--overlays.num_images", "0",
    ])
    assert cli.model.hparams.architecture == architecture
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["val/mtl/score"])
