"""The explicit training step's interfaces: the balancer's one after-optimizer-step hook, and
the balancing record the step returns to ``on_train_batch_end`` hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from mtl_lightning.balancing import (
    BalancingRecord,
    FastAdaptiveMultitask,
    GradientStatistics,
    PCGrad,
    StaticWeighting,
    TaskLosses,
)
from mtl_lightning.module import MultiTaskModule


def _losses(values: dict[str, float]) -> TaskLosses:
    return TaskLosses.gather({t: torch.tensor(v) for t, v in values.items()},
                             {t: torch.tensor(4) for t in values})


def _never() -> TaskLosses:
    raise AssertionError("recompute() was called by a method that needs no recomputed losses")


def test_the_default_hook_recomputes_nothing() -> None:
    StaticWeighting().after_optimizer_step(_never)
    next_batch = FastAdaptiveMultitask(update="next_batch")
    next_batch.bind(["a", "b"])
    next_batch.after_optimizer_step(_never)


def test_famo_same_batch_updates_through_the_hook_as_after_step() -> None:
    """The generic hook gives FAMO exactly the update of its paper step (``after_step``)."""
    hooked, direct = FastAdaptiveMultitask(), FastAdaptiveMultitask()
    for balancer in (hooked, direct):
        balancer.bind(["a", "b"])
        balancer.combine(_losses({"a": 1.0, "b": 1.0}), step=0)
    after = _losses({"a": 0.7, "b": 0.99})
    hooked.after_optimizer_step(lambda: after)
    direct.after_step(after)
    assert float(hooked.famo._w[1]) > float(hooked.famo._w[0])  # b fell least
    torch.testing.assert_close(hooked.famo._w, direct.famo._w)


class RecordingStatic(StaticWeighting):
    """Equal weights; records each after-optimizer-step call and the losses it recomputes."""

    def __init__(self) -> None:
        super().__init__(statistics_every=1)
        self.recomputed: list[dict[str, float]] = []

    def after_optimizer_step(self, recompute: Callable[[], TaskLosses]) -> None:
        self.recomputed.append({t: float(v) for t, v in recompute().values.items()})


class KeepOutputs(Callback):
    def __init__(self) -> None:
        self.outputs: list[Any] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.outputs.append(outputs)


def _fit(balancer, tiny_scenes, tmp_path, **trainer_options) -> tuple[Trainer, KeepOutputs]:
    torch.manual_seed(0)
    model = MultiTaskModule(task_info=tiny_scenes.task_info, neck_channels=16,
                            balancer=balancer)
    keep = KeepOutputs()
    trainer = Trainer(max_epochs=1, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, callbacks=[keep],
                      **trainer_options)
    trainer.fit(model, datamodule=tiny_scenes)
    return trainer, keep


def test_the_hook_runs_once_per_optimizer_step_with_the_batchs_losses(
        tiny_scenes, tmp_path) -> None:
    balancer = RecordingStatic()
    trainer, keep = _fit(balancer, tiny_scenes, tmp_path, limit_train_batches=4,
                         accumulate_grad_batches=2)
    assert trainer.global_step == 2
    assert len(balancer.recomputed) == 2  # after batches 1 and 3, where the optimizer stepped
    tasks = set(tiny_scenes.task_info)
    assert all(set(values) == tasks for values in balancer.recomputed)
    assert all(torch.isfinite(torch.tensor(list(v.values()))).all()
               for v in balancer.recomputed)
    # every step returned its record; statistics_every=1: statistics on every step
    for outputs in keep.outputs:
        record = outputs["balancing"]
        assert isinstance(record, BalancingRecord)
        assert set(record.weights) == tasks
        assert isinstance(record.statistics, GradientStatistics)
        assert set(record.statistics.tasks) == tasks
        m = len(record.statistics.tasks)
        assert record.statistics.cosine.shape == (m, m)
        torch.testing.assert_close(record.statistics.cosine.diagonal(), torch.ones(m))


@pytest.mark.parametrize("statistics_every", [1, 0])
def test_a_gradient_weighting_completes_the_record_in_its_backward(
        statistics_every, tiny_scenes, tmp_path) -> None:
    trainer, keep = _fit(PCGrad(statistics_every=statistics_every), tiny_scenes, tmp_path,
                         limit_train_batches=2)
    assert trainer.global_step == 2 and len(keep.outputs) == 2
    for outputs in keep.outputs:
        record = outputs["balancing"]
        assert set(record.weights) == set(tiny_scenes.task_info)
        assert all(torch.isfinite(w) for w in record.weights.values())
        assert (record.statistics is not None) == (statistics_every == 1)
    assert trainer.lightning_module._awaiting_backward is None  # nothing left between hooks
