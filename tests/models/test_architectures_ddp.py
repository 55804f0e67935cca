"""PAD-Net, MTI-Net and MMoE under DDP: 2 processes x B/2 samples take the step of 1 x B.

The set-up is the balancing exactness test's (:mod:`tests.balancing.test_ddp_exact`: gloo on
CPU, frozen BatchNorm, a fixed unshuffled split, partial labels, the same initial weights),
with equal weighting and the architecture changed. What these architectures add and could get
wrong under DDP: parameters built after construction (``bind_tasks``: the initial heads and
distillation, which must exist before DDP wraps the model), the deep-supervision losses of the
initial heads (sample means, like the final ones, also for a task labelled on one process
only), and the gates of the experts (per-sample weights).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mtl_lightning.balancing import StaticWeighting
from tests.balancing.test_ddp_exact import (
    STEPS,
    _free_port,
    assert_same_run,
    make_model,
    make_samples,
    train,
)

ARCHITECTURES = ("pad_net", "mti_net", "mmoe")


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    samples = make_samples()
    for name in ARCHITECTURES:
        model = make_model(StaticWeighting(), architecture=name)
        train(model, samples, Path(out) / f"{name}.pt", devices=world, batch_size=4, steps=STEPS)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each architecture's 2-process run, from one start of 2 processes."""
    out = tmp_path_factory.mktemp("ddp_architectures")
    threads = torch.get_num_threads()
    try:
        mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_two_processes_take_the_single_process_step(architecture: str, ddp_runs: Path,
                                                    tmp_path: Path) -> None:
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        model = make_model(StaticWeighting(), architecture=architecture)
        assert model.architecture.__class__.__name__ != "HardSharing"
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()
                   if isinstance(v, torch.Tensor)}
        single = train(model, make_samples(), tmp_path / "single.pt", devices=1, batch_size=8,
                       steps=STEPS)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    ddp = torch.load(ddp_runs / f"{architecture}.pt", weights_only=True)
    for key, value in initial.items():
        assert torch.equal(ddp["initial"][key], value), key  # the same start everywhere
    assert_same_run(ddp, single, initial)
    other = torch.load(ddp_runs / f"{architecture}.pt.rank1", weights_only=True)
    assert other["state"].keys() == ddp["state"].keys()
    for key, value in ddp["state"].items():  # both processes hold the same model
        torch.testing.assert_close(other["state"][key], value, rtol=0, atol=0)
