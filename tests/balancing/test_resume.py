"""Stateful balancers resume exactly from a Lightning checkpoint.

Uncertainty weighting's log-variances, DWA's loss history, FAMO's logits and their Adam state,
GradNorm's weights and initial losses, Nash-MTL's warm start, GradVac's similarity EMA, STCH's
nadir, ExcessMTL's squared-gradient sums, and DB-MTL's and MoCo's gradient averages live in
the model's state_dict (parameters, buffers or ``get_extra_state``). (SDMGrad's weights sit at
a vertex of the simplex on this data and do not move: its state is tested in
``test_jacobian_methods.py``.) For each, a run of 3
epochs is compared with a fresh model resumed (``ckpt_path``) from the checkpoint that run
wrote at the end of epoch 1: every weight and the balancer's whole state must end the same.

The data is a fixed in-memory list (no augmentation, no shuffling) and nothing draws random
numbers during training (no dropout; GradVac's random order is seeded by the step), so the
two runs can be compared exactly: Lightning does not restore the global random generators.
Three epochs, not two, so that DWA's weights (which need two finished epochs) are used after
the resume. The second batch of each epoch labels no segmentation, so the gradient
weightings see two task sets (GradVac keeps a state for each; Nash-MTL, whose torchjd solver
fails for one task, must answer without it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from mtl_lightning.balancing import (
    DBMTL,
    PCD,
    Balancer,
    DynamicWeightAverage,
    ExcessMTL,
    FastAdaptiveMultitask,
    GradNorm,
    GradVac,
    MoCo,
    NashMTL,
    SmoothTchebycheff,
    UncertaintyWeighting,
)
from mtl_lightning.module import MultiTaskModule

from .test_ddp_exact import make_model, make_samples

EPOCHS = 3
BALANCERS: dict[str, Callable[[], Balancer]] = {
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "famo-same-batch": lambda: FastAdaptiveMultitask(update="same_batch"),
    "famo-next-batch": lambda: FastAdaptiveMultitask(update="next_batch"),
    "gradnorm": GradNorm,
    "nash-mtl": NashMTL,
    "gradvac": GradVac,
    "stch": lambda: SmoothTchebycheff(warmup_steps=3),  # the nadir's warm-up spans the resume
    "excess-mtl": ExcessMTL,
    "db-mtl": DBMTL,
    "moco": MoCo,
    "pcd": lambda: PCD(primary="segmentation"),  # the second batch lacks the primary task
}


@pytest.fixture(autouse=True)
def _one_thread_restored_flags() -> Iterator[None]:
    """One intra-op thread: these tiny models run ~20x slower with 2 threads when the CPU is
    busy. The Trainers set ``deterministic``; later tests get the flag they had before."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def fit(model: MultiTaskModule, root: Path, ckpt_path: Path | None = None) -> None:
    """3 epochs of 2 steps (8 samples each), a checkpoint at the end of each epoch."""
    checkpoint = ModelCheckpoint(dirpath=root, filename="{epoch}", save_top_k=-1,
                                 every_n_epochs=1, save_on_train_epoch_end=True)
    trainer = Trainer(
        accelerator="cpu", max_epochs=EPOCHS, limit_val_batches=0, num_sanity_val_steps=0,
        deterministic=True, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, callbacks=[checkpoint],
    )
    samples = make_samples()
    samples = samples[:8] + samples[24:]  # all labelled, then no segmentation
    trainer.fit(model, DataLoader(samples, batch_size=8), ckpt_path=ckpt_path)
    assert trainer.global_step == 2 * EPOCHS


def balancer_state(model: MultiTaskModule) -> dict[str, Any]:
    return {k: v for k, v in model.state_dict().items() if k.startswith("balancer.")}


def assert_same(actual: Any, expected: Any, where: str = "") -> None:
    """Nested state (tensors, arrays, numbers, containers) is equal; tensors to ~float noise."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, torch.Tensor):
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7,
                                   msg=lambda m: f"{where}: {m}")
    elif isinstance(expected, np.ndarray):
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-7, err_msg=where)
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-6), where
    else:
        assert actual == expected, where


def differs(actual: Any, expected: Any) -> bool:
    try:
        assert_same(actual, expected)
    except AssertionError:
        return True
    return False


@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:The dirpath has changed")
@pytest.mark.parametrize("name", list(BALANCERS))
def test_resumed_run_ends_like_the_uninterrupted_run(name: str, tmp_path: Path) -> None:
    fresh = balancer_state(make_model(BALANCERS[name]()))
    uninterrupted = make_model(BALANCERS[name]())
    fit(uninterrupted, tmp_path / "full")

    # The end-of-epoch-1 checkpoint loads without unpickling code, and holds a trained
    # (non-initial) balancer state that a fresh model takes on.
    checkpoint_path = tmp_path / "full" / "epoch=0.ckpt"
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 2
    saved = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("balancer.")}
    assert differs(saved, fresh), f"{name}: the checkpoint holds the initial balancer state"
    loaded = make_model(BALANCERS[name]())
    loaded.load_state_dict(checkpoint["state_dict"])
    assert_same(balancer_state(loaded), saved, "loaded")

    resumed = make_model(BALANCERS[name]())
    fit(resumed, tmp_path / "resumed", ckpt_path=checkpoint_path)
    assert_same(balancer_state(resumed), balancer_state(uninterrupted), "balancer")
    assert differs(balancer_state(resumed), saved), "the balancer state did not move after"
    assert_same(resumed.state_dict(), uninterrupted.state_dict(), "model")
