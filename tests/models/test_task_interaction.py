"""PAD-Net, MTI-Net (task-interaction decoders) and gated experts (MMoE, CGC)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtl_lightning.cli import run_cli
from mtl_lightning.models.architectures import ARCHITECTURES
from mtl_lightning.models.architectures.distillation import MultiModalDistillation
from mtl_lightning.module import MultiTaskModule

from ..conftest import SMOKE_CONFIG

INFO = {
    "classification": {"num_classes": 3, "class_names": ["a", "b", "c"]},
    "segmentation": {"num_classes": 3, "class_names": ["background", "x", "y"]},
    "detection": {"num_classes": 2, "class_names": ["x", "y"]},
}
SMALL = {"channels": [16, 16, 32, 32], "stem_width": 16}
FOUR_TASKS = {"classification": None, "segmentation": None, "detection": None, "edges": None}
DECODERS = ("pad_net", "mti_net")


def _model(architecture: str, **kwargs) -> MultiTaskModule:
    return MultiTaskModule(tasks=FOUR_TASKS, task_info=INFO, neck_channels=16,
                           backbone_kwargs=SMALL, architecture=architecture, **kwargs)


def test_the_architectures_are_registered() -> None:
    assert {"pad_net", "mti_net", "mmoe"} <= set(ARCHITECTURES)


@pytest.mark.parametrize("architecture", DECODERS)
def test_initial_predictions_of_the_dense_tasks_only_and_only_in_training(
        architecture: str) -> None:
    model = _model(architecture).train()
    outputs, shared = model.run_network(torch.rand(2, 3, 64, 64))
    initial = shared.deep_supervision
    assert set(initial) == {"segmentation", "edges"}  # classification, detection pass through
    for task, entries in initial.items():
        [(weight, prediction)] = entries
        assert weight == 1.0
        assert prediction.shape == outputs[task].shape  # the format the task's loss reads
    model.eval()
    _, shared = model.run_network(torch.rand(2, 3, 64, 64))
    assert shared.deep_supervision == {}


def _scenes_model(architecture: str, info: dict, **kwargs) -> MultiTaskModule:
    return MultiTaskModule(tasks=FOUR_TASKS, task_info=info, neck_channels=16,
                           backbone_kwargs=SMALL, architecture=architecture, **kwargs).train()


@pytest.mark.parametrize("architecture", DECODERS)
def test_deep_supervision_loss_reaches_the_initial_heads(architecture: str, tiny_scenes,
                                                         tiny_batch: dict) -> None:
    model = _scenes_model(architecture, tiny_scenes.task_info,
                          architecture_options={"deep_supervision_weight": 0.5})
    losses, _ = model._task_losses(tiny_batch, "train", update_metrics=False)
    head = list(model.architecture.initial_heads["segmentation"].parameters())
    grads = torch.autograd.grad(losses["segmentation"], head, allow_unused=True)
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # the task's loss is its final loss plus 0.5 x its loss on the initial prediction
    # train-mode BN: the same batch, the same outputs
    outputs, shared = model.run_network(tiny_batch["image"])
    task = model.tasks["segmentation"]
    has, target = model.task_labels(tiny_batch, "segmentation")
    [(_, initial)] = shared.deep_supervision["segmentation"]
    expected = task.loss(outputs["segmentation"], target, has) + 0.5 * task.loss(
        initial, target, has)
    torch.testing.assert_close(losses["segmentation"], expected)
    assert float(task.loss(initial, target, has)) > 0


@pytest.mark.parametrize("architecture", DECODERS)
def test_distillation_carries_one_dense_task_into_another(architecture: str) -> None:
    model = _model(architecture).train()
    outputs = model(torch.rand(2, 3, 64, 64))
    attention = [p for distil in model.architecture.distillation
                 if "segmentation" in distil.tasks for p in distil.parameters_of("segmentation")]
    assert attention  # edges sends messages to segmentation at level 0
    grads = torch.autograd.grad(outputs["segmentation"].sum(), attention, allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    # the messages segmentation receives are its own: the edges output does not use them
    grads = torch.autograd.grad(outputs["edges"].sum(), attention, allow_unused=True)
    assert all(g is None or float(g.abs().sum()) == 0 for g in grads)


def test_multi_modal_distillation_formula() -> None:
    torch.manual_seed(0)
    distil = MultiModalDistillation(["a", "b", "c"], 4)
    x = {t: torch.randn(2, 4, 5, 5) for t in "abc"}
    out = distil(x)
    for target in "abc":
        expected = x[target].clone()
        for source in "abc":
            if source != target:
                unit = distil.attention[target][source]
                expected += torch.sigmoid(unit.gate(x[source])) * unit.message(x[source])
        torch.testing.assert_close(out[target], expected)
    alone = MultiModalDistillation(["a"], 4)
    assert alone(x)["a"] is x["a"] and not list(alone.parameters())


@pytest.mark.parametrize(("architecture", "options"), [
    ("pad_net", None), ("mti_net", None), ("mmoe", None), ("mmoe", {"task_experts": 1})])
def test_every_parameter_has_one_role_and_task_parameters_serve_their_task(
        architecture: str, options: dict | None, tiny_scenes, tiny_batch: dict) -> None:
    model = _scenes_model(architecture, tiny_scenes.task_info, architecture_options=options)
    roles = model.architecture.roles()
    assigned = [id(p) for p in roles.trunk + roles.shared]
    assigned += [id(p) for params in roles.per_task.values() for p in params]
    assert sorted(assigned) == sorted(id(p) for p in model.architecture.parameters())
    losses, _ = model._task_losses(tiny_batch, "train", update_metrics=False)
    for task, params in roles.per_task.items():
        for other, loss in losses.items():
            grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
            used = any(g is not None and float(g.abs().sum()) > 0 for g in grads)
            assert used == (other == task), (task, other)


def test_mmoe_gates_mix_the_experts() -> None:
    model = MultiTaskModule(task_info=INFO, neck_channels=16, backbone_kwargs=SMALL,
                            architecture="mmoe", architecture_options={"experts": 1}).eval()
    image = model.normalize(torch.rand(2, 3, 64, 64))
    features = model.architecture(image).features
    maps = model.architecture.backbone.adapt(model.architecture.backbone.encode(image))
    experts = model.architecture.experts
    # one expert: every gate is 1, each task reads that expert's map through the neck
    expected = model.architecture.neck([experts[str(j)][0](m) for j, m in enumerate(maps)])
    torch.testing.assert_close(features["segmentation"].pyramid[0], expected.pyramid[0])
    with pytest.raises(ValueError, match="experts"):
        MultiTaskModule(task_info=INFO, neck_channels=16, backbone_kwargs=SMALL,
                        architecture="mmoe", architecture_options={"experts": 0})


@pytest.mark.slow
@pytest.mark.parametrize(("architecture", "extra"), [
    ("pad_net", ["--model.balancer", "configs/balancer/pcgrad.yaml"]),
    ("mti_net", ["--model.balancer", "configs/balancer/mgda.yaml"]),
    ("mmoe", []),
])
def test_the_smoke_config_trains(architecture: str, extra: list[str], tmp_path: Path,
                                 scenes_root: Path) -> None:
    cli = run_cli([
        "fit", "--config", str(SMOKE_CONFIG), "--config", "configs/experiment/aux_edges.yaml",
        "--model", f"configs/model/{architecture}.yaml", *extra,
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--data.init_args.root", str(scenes_root), "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--test_after_fit", "false",
        "--overlays.num_images", "0",
    ])
    assert cli.model.hparams.architecture == architecture
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["val/mtl/score"])
    assert torch.isfinite(metrics["train/segmentation/loss"])
