"""Contracts on the private API of our dependencies: each test names what we touch, so that a
release that renames or removes it fails here, loudly, instead of breaking a run silently
(a state attribute that no longer exists would be set on restore and never read again: a
resumed run would quietly start its balancer from scratch).

pyproject.toml holds these packages below their next minor release; docs/development.md says
why. When a new release passes this file (and the suite), raise the bound.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from mtl_lightning.balancing import FastAdaptiveMultitask, TaskLosses
from mtl_lightning.balancing.gradient_weighting import TorchjdWeighting


def _stateful_weightings() -> list[type[TorchjdWeighting]]:
    import mtl_lightning.balancing as balancing

    found = [cls for cls in vars(balancing).values() if isinstance(cls, type)
             and issubclass(cls, TorchjdWeighting) and cls.state_attributes]
    assert len(found) >= 6, found  # Nash-MTL, GradVac, ExcessMTL, SDMGrad, CR-MOGM, PCD
    return sorted(found, key=lambda cls: cls.__name__)


def _run(method: TorchjdWeighting, steps: int = 3):
    """The method's torchjd weighting after a few steps on random task gradients."""
    generator = torch.Generator().manual_seed(0)
    tasks = ("a", "b", "c")
    losses = TaskLosses.gather({t: torch.tensor(1.0 + i) for i, t in enumerate(tasks)},
                               {t: torch.tensor(4) for t in tasks})
    for step in range(steps):
        jacobian = torch.randn(3, 12, generator=generator)
        if method.takes_jacobian:
            weighting = method.weighting_for(tasks)
            weighting(jacobian)
        else:
            method.weights(jacobian @ jacobian.T, losses, step)
    return method.weighting_for(tasks)


#: What each method's ``restored`` hook reads or sets on the torchjd object after a resume.
RESTORE_MEMBERS = {
    "NashMTL": ("_init_optim_problem", "step"),
    "ExcessMTL": ("_sq_grad_sum", "_state_key"),
    "SDMGrad": ("_w", "_state_key"),
}


def _own_attributes(weighting: object) -> set[str]:
    """The attributes the object itself set (an ``nn.Module`` keeps buffers apart)."""
    own = set(vars(weighting))
    for registry in ("_buffers", "_parameters", "_modules"):
        own |= set(getattr(weighting, registry, None) or {})
    return own


@pytest.mark.parametrize("cls", _stateful_weightings(), ids=lambda cls: cls.__name__)
def test_torchjd_weightings_still_hold_the_state_we_save(cls) -> None:
    """``state_attributes`` (saved in checkpoints, restored on resume) are attributes the
    torchjd weighting itself sets, and the restore hooks' private members exist."""
    method = cls() if cls.__name__ != "PCD" else cls(primary="a")
    weighting = _run(method)
    own = _own_attributes(weighting)
    missing = [name for name in cls.state_attributes if name not in own]
    assert not missing, (
        f"torchjd's {type(weighting).__name__} no longer sets {missing}: "
        f"{cls.__name__}.state_attributes (mtl_lightning/balancing/aggregators.py) saves them "
        "in checkpoints; follow the rename and check the upper bound of torchjd in "
        "pyproject.toml.")
    for name in RESTORE_MEMBERS.get(cls.__name__, ()):
        assert name in own or callable(getattr(weighting, name, None)), (
            f"torchjd's {type(weighting).__name__} lost {name}, which {cls.__name__}.restored "
            "(mtl_lightning/balancing/aggregators.py) uses after a resume.")


def test_torchjd_famo_still_holds_the_state_we_save() -> None:
    balancer = FastAdaptiveMultitask()
    balancer.bind(["a", "b"])
    famo = balancer.famo
    for name in ("_w", "_prev_losses", "_optimizer", "lr", "weight_decay"):
        assert hasattr(famo, name), (
            f"torchjd's FAMO scalarizer lost {name}: balancing/famo.py saves and restores it.")
    assert isinstance(famo._w, torch.Tensor) and famo._w.shape == (2,)
    assert callable(famo.update)
    # The state round trip the checkpoint relies on.
    losses = TaskLosses.gather({"a": torch.tensor(1.0), "b": torch.tensor(2.0)},
                               {"a": torch.tensor(2), "b": torch.tensor(2)})
    balancer.combine(losses, step=0)
    balancer.after_step(losses)
    state = balancer.get_extra_state()
    restored = FastAdaptiveMultitask()
    restored.bind(["a", "b"])
    restored.set_extra_state(state)
    torch.testing.assert_close(restored.famo._w, famo._w)
    first = balancer.combine(losses, step=1).weights
    second = restored.combine(losses, step=1).weights
    for task in first:
        torch.testing.assert_close(first[task], second[task])


#: ModelCheckpoint's private members that callbacks/checkpoint.py calls, with the parameters
#: it passes.
CHECKPOINT_HELPERS = {
    "_should_save_on_train_epoch_end": ["trainer"],
    "_monitor_candidates": ["trainer"],
    "_should_skip_saving_checkpoint": ["trainer"],
    "_save_topk_checkpoint": ["trainer", "monitor_candidates"],
    "_save_last_checkpoint": ["trainer", "monitor_candidates"],
}


@pytest.mark.parametrize("name", sorted(CHECKPOINT_HELPERS))
def test_lightning_model_checkpoint_helpers_keep_their_signatures(name) -> None:
    helper = getattr(ModelCheckpoint, name, None)
    assert callable(helper), (
        f"Lightning's ModelCheckpoint lost {name}, which mtl_lightning/callbacks/checkpoint.py "
        "calls to keep last.ckpt current; check the upper bound of lightning in pyproject.toml.")
    parameters = [p for p in inspect.signature(helper).parameters if p != "self"]
    assert parameters == CHECKPOINT_HELPERS[name], (name, parameters)


def test_lightning_model_checkpoint_keeps_its_private_state() -> None:
    checkpoint = ModelCheckpoint(monitor="val/mtl/score", every_n_epochs=2)
    assert checkpoint._every_n_epochs == 2
    # Read with getattr(..., False) in checkpoint.py: a rename would silently skip the
    # deferred save, so its presence is checked here.
    assert "_defer_save_until_validation" in vars(checkpoint), (
        "ModelCheckpoint no longer has _defer_save_until_validation; "
        "callbacks/checkpoint.py's _save_deferred would never run.")


def test_lightning_cli_still_parses_the_checkpoint_path_in_a_hook() -> None:
    hook = getattr(LightningCLI, "_parse_ckpt_path", None)
    assert callable(hook), (
        "LightningCLI lost _parse_ckpt_path, where mtl_lightning/cli.py refuses a file that is "
        "not a checkpoint before Lightning unpickles it.")
    assert list(inspect.signature(hook).parameters) == ["self"]
    assert "_parse_ckpt_path" in inspect.getsource(LightningCLI.__init__) or any(
        "_parse_ckpt_path" in inspect.getsource(member)
        for member in vars(LightningCLI).values() if inspect.isfunction(member)
        and member is not hook), "LightningCLI no longer calls _parse_ckpt_path"


def test_faster_coco_eval_still_has_the_rle_decoder_we_call() -> None:
    from mtl_lightning.data.coco.masks import checked_rle

    runs = checked_rle.toUncompressedRLE([{"size": [2, 3], "counts": "06"}])[0]["counts"]
    assert list(runs) == [0, 6], runs  # "06": 0 background pixels, then 6 foreground
