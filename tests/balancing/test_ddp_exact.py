"""Balancing is exact under DDP: 2 processes x B/2 samples take the step of 1 process x B.

The claim of :mod:`mtl_lightning.balancing`: whatever a balancer's weights are computed from
(global loss values, the global Gramian) is made global first, and each process's losses are
rescaled by its share of the labelled samples, so the update does not depend on how a global
batch is split over processes, partial labels included. Each test trains the same model from
the same initial weights on the same data for 4 steps twice, once with 2 processes (gloo on
CPU) and once in a single process with the doubled batch, and compares the gradient of every
step and the final weights. The data has partial labels (see ``LABELS``): a task labelled on
one process only, unequal shares of a task's samples, a task labelled nowhere.

The 2-process runs use Lightning's ``strategy="ddp"`` in processes started the way torchrun or
SLURM start them (``torch.multiprocessing`` with ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` set,
gloo on CPU): the processes start once and fit one model per balancer in turn, which costs
one start-up instead of one per balancer (``ddp_spawn`` would spawn for every fit).

What would differ for reasons that have nothing to do with balancing, and how it is removed:

- BatchNorm in training mode normalises with the statistics of the batch a process sees, so
  B/2 and B give different activations. ``SyncBatchNorm`` would make them global, but torch
  refuses it on CPU tensors ("SyncBatchNorm expected input tensor to be on GPU"), and timm's
  ``norm_layer`` option (e.g. GroupNorm) would only cover the backbone, not the BatchNorm
  inside the segmentation head. So every BatchNorm is frozen (eval mode, running statistics):
  a fixed per-channel affine map, the same for any batch split, still trained (its weight and
  bias receive gradients). See :class:`FreezeBatchNorm`.
- Detection is left out: its focal loss is normalised by the number of objects in the batch
  (a batch statistic, like BatchNorm), so it is not a mean over samples. Classification and
  segmentation (no ignore pixels, equal image sizes) are sample means; so is depth, whose L1
  loss is a mean over valid pixels: every sample has the same invalid (0) block, hence the
  same number of valid pixels.
- Data order: the data is a fixed in-memory list without augmentation. Lightning's automatic
  sampler is no use here: it always *shuffles* a training loader's ``DistributedSampler``
  (even when the loader is sequential). :class:`FixedData` gives each process a
  ``DistributedSampler(shuffle=False)`` itself: rank r reads samples r, r+2, ..., so step k of
  the 2 processes together reads samples 8k..8k+7, exactly the single process's batch of 8
  (only their order differs: float sums agree to ~1e-7).
- No randomness: no dropout or drop-path, ``deterministic=True``, the same initial weights
  everywhere (built from one seed; checked). The optimiser and schedule are the module's
  own (AdamW, warm-up + cosine over ``max_steps``), identical in both runs; no clipping.

Because AdamW's first steps are nearly ``lr * sign(g)``, comparing weights alone would miss a
gradient that is off by a constant factor; the test compares the gradient of every step (at
the optimizer step, after DDP's or the balancer's averaging) as well as the final weights.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch import (
    Callback,
    LightningDataModule,
    LightningModule,
    Trainer,
    seed_everything,
)
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from mtl_lightning.balancing import (
    DBMTL,
    MGDA,
    Balancer,
    ConFIG,
    ExcessMTL,
    GeometricLossStrategy,
    GradDrop,
    MoCo,
    PCGrad,
    SmoothTchebycheff,
    UncertaintyWeighting,
    UPGrad,
)
from mtl_lightning.module import MultiTaskModule

IMAGE_SIZE = 32
TASK_INFO = {
    "classification": {"num_classes": 3, "class_names": ["a", "b", "c"]},
    "segmentation": {"num_classes": 4},
    "depth": {},
}
# Labelled samples per global batch of 8 (samples 8k..8k+7; rank 0 reads the even ones):
# step 0 everything; step 1 segmentation only on rank 1 and classification 3 + 1 (unequal
# shares); step 2 each rank labels a different task; step 3 segmentation nowhere. Depth:
# step 1 on rank 0 only, step 2 unequal shares (3 + 1), step 3 one sample.
LABELS = {
    "classification": [range(0, 8), [8, 10, 12, 9], range(16, 24, 2), range(24, 32)],
    "segmentation": [range(0, 8), range(9, 16, 2), range(17, 24, 2), []],
    "depth": [range(0, 8), range(8, 16, 2), [16, 18, 20, 17], [27]],
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


def _depth_map(generator: torch.Generator) -> torch.Tensor:
    depth = torch.rand(1, 4, 4, generator=generator).add(0.5).repeat_interleave(
        8, 1).repeat_interleave(8, 2)
    depth[:, :8, :8] = 0.0
    return depth


def make_samples(num: int = 32, seed: int = 0) -> list[dict[str, Any]]:
    """Fixed samples (random images and labels) in the dataset's format, with partial labels
    as in ``LABELS``: a plain list is a map-style dataset, and pickles to spawned processes."""
    generator = torch.Generator().manual_seed(seed)
    labelled = {task: {i for group in groups for i in group} for task, groups in LABELS.items()}
    samples = []
    for i in range(num):
        samples.append({
            "image": torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
            "targets": {
                "classification": torch.randint(0, 3, (), generator=generator),
                # 8x8 blocks of one class, upsampled: learnable, and no ignore pixels (255).
                "segmentation": torch.randint(0, 4, (4, 4), generator=generator, dtype=torch.uint8)
                .repeat_interleave(8, 0).repeat_interleave(8, 1),
                # [1, H, W] depth with the same invalid (0) 8x8 block in every sample
                "depth": _depth_map(generator),
            },
            "has": {task: torch.tensor(i in labelled[task]) for task in TASK_INFO},
        })
    return samples


def make_model(balancer: Balancer, seed: int = 0, architecture: str = "hard") -> MultiTaskModule:
    """An eighth-width ResNet-18 with a narrow neck and heads (classification, segmentation
    and depth); no dropout or drop-path."""
    seed_everything(seed, verbose=False)
    return MultiTaskModule(
        task_info=TASK_INFO,
        tasks={"classification": None, "segmentation": {"decoder_channels": 8},
               "depth": {"decoder_channels": 8}},
        backbone="resnet18",
        backbone_kwargs={"channels": [8, 16, 32, 64], "stem_width": 8},
        neck_channels=8, balancer=balancer, train_metrics=False, lr=1e-2,
        architecture=architecture,
    )


class FixedData(LightningDataModule):
    """``samples`` in order, split over processes without shuffling (see the module docstring).

    Args:
        batch_size: per process.
    """

    def __init__(self, samples: list[dict[str, Any]], batch_size: int) -> None:
        super().__init__()
        self.samples, self.batch_size = samples, batch_size

    def train_dataloader(self) -> DataLoader:
        sampler = DistributedSampler(self.samples, num_replicas=self.trainer.world_size,
                                     rank=self.trainer.global_rank, shuffle=False)
        return DataLoader(self.samples, batch_size=self.batch_size, sampler=sampler)


class FreezeBatchNorm(Callback):
    """Keep every BatchNorm in eval mode: batch statistics would depend on the batch split.

    Lightning puts the model in training mode at the start of each epoch, so this runs before
    every batch."""

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        for module in pl_module.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


class Recorder(Callback):
    """Saves the gradient at every optimizer step and the final state_dict to ``path`` (rank 0)
    or ``<path>.rank<r>`` (other ranks).

    ``on_before_optimizer_step`` sees the gradient the optimizer will use: averaged over
    processes (by DDP or by the balancer) and unscaled (16-mixed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.grads: list[dict[str, torch.Tensor]] = []
        self.initial: dict[str, torch.Tensor] = {}

    @staticmethod
    def _state(module: LightningModule) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items()
                if isinstance(v, torch.Tensor)}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.initial = self._state(pl_module)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule,
                                 optimizer: Any) -> None:
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.named_parameters()
                           if p.grad is not None})

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rank = trainer.global_rank
        path = self.path if rank == 0 else self.path.with_name(f"{self.path.name}.rank{rank}")
        torch.save({"initial": self.initial, "grads": self.grads,
                    "state": self._state(pl_module)}, path)


def train(model: MultiTaskModule, samples: list[dict[str, Any]], path: Path, devices: int,
          batch_size: int, steps: int, **trainer_kwargs: Any) -> dict[str, Any]:
    """Fit ``model`` for ``steps`` steps on ``devices`` processes; return what rank 0 saved."""
    trainer = Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        max_steps=steps, use_distributed_sampler=False, limit_val_batches=0,
        num_sanity_val_steps=0, deterministic=True, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=path.parent,
        callbacks=[FreezeBatchNorm(), Recorder(path)], **trainer_kwargs,
    )
    trainer.fit(model, datamodule=FixedData(samples, batch_size))
    return torch.load(path, weights_only=True) if trainer.is_global_zero else {}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm().clamp(min=1e-30))


def _flat(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([tensors[k].reshape(-1) for k in sorted(tensors)])


#: AdamW divides each gradient element by its running magnitude plus eps (1e-8): an element
#: whose gradient is within about ten eps of zero turns its float noise (a 7e-11 change of a
#: 7e-9 gradient, seen) into a visible change of its update, so such elements (about 3 % of
#: this small model's weights) are left out of the element-wise comparison of the final
#: weights; the gradients themselves are compared at every step, and the change over the run
#: in norm.
NOISE_FLOOR = 1e-7


def _above_noise_floor(grads: list[dict[str, torch.Tensor]], name: str,
                       value: torch.Tensor) -> torch.Tensor:
    """The elements of weight ``name`` whose gradient stayed above ``NOISE_FLOOR`` (or was
    exactly zero: no update at all) at every step; every element of a tensor that has no
    gradient (buffers)."""
    steady = torch.ones_like(value, dtype=torch.bool)
    for step in grads:
        if name in step:
            grad = step[name].abs()
            steady &= (grad >= NOISE_FLOOR) | (grad == 0)
    return steady


def assert_same_run(ddp: dict[str, Any], single: dict[str, Any], initial: dict[str, Any],
                    tolerance: float = 1e-5) -> None:
    """Both runs took the same steps.

    Every step's whole gradient agrees to ``tolerance`` (relative), each tensor's to
    ``10 x tolerance`` (small tensors such as BatchNorm weights carry relatively more float
    noise: ~1e-6 seen, against the O(1) errors of a wrong split), the final weights agree to
    ``tolerance`` element by element (except elements whose gradient came within
    ``NOISE_FLOOR`` of zero, see there) and their change over the run to ``10 x tolerance`` in
    norm (AdamW divides each gradient element by its own running magnitude, which enlarges the
    relative float noise of elements near 0; ~3e-6 seen), and most weights did change.
    """
    assert len(ddp["grads"]) == len(single["grads"]) > 0
    for step, (got, want) in enumerate(zip(ddp["grads"], single["grads"])):
        assert got.keys() == want.keys()
        error = relative_error(_flat(got), _flat(want))
        assert error < tolerance, f"step {step} gradient: {error:.2e}"
        for name in want:
            if want[name].norm() > 0:
                error = relative_error(got[name], want[name])
                assert error < 10 * tolerance, f"step {step} gradient of {name}: {error:.2e}"
            else:  # e.g. the segmentation head in the step where no sample labels it
                assert got[name].norm() < 1e-12, f"step {step} gradient of {name}"
    weights = {k: v for k, v in single["state"].items() if v.is_floating_point()}
    compared = total = 0
    for name, value in weights.items():
        steady = _above_noise_floor(single["grads"], name, value)
        compared, total = compared + int(steady.sum()), total + steady.numel()
        torch.testing.assert_close(ddp["state"][name][steady], value[steady], rtol=tolerance,
                                   atol=tolerance, msg=lambda m, name=name: f"final {name}: {m}")
    assert compared > 0.9 * total, f"only {compared} of {total} weights compared"
    change = {k: v - initial[k] for k, v in weights.items()}
    error = relative_error(_flat({k: ddp["state"][k] - initial[k] for k in weights}),
                           _flat(change))
    assert error < 10 * tolerance, f"change of the weights: {error:.2e}"
    assert sum(bool(c.norm() > 0) for c in change.values()) > len(change) // 2


def test_samples_split_over_ranks_as_designed() -> None:
    """The partial-label pattern really puts a task on one rank only (what the DDP tests rely
    on): rank r of 2 reads samples r, r+2, ... of each global batch of 8."""
    samples = make_samples()
    has = {t: [bool(s["has"][t]) for s in samples] for t in TASK_INFO}
    rank0, rank1 = range(8, 16, 2), range(9, 16, 2)
    assert not any(has["segmentation"][i] for i in rank0)
    assert all(has["segmentation"][i] for i in rank1)
    assert sum(has["classification"][i] for i in rank0) == 3
    assert sum(has["classification"][i] for i in rank1) == 1
    assert not any(has["segmentation"][24:32])
    assert all(has["depth"][i] for i in rank0) and not any(has["depth"][i] for i in rank1)
    assert sum(has["depth"][i] for i in range(16, 24, 2)) == 3
    assert sum(has["depth"][i] for i in range(17, 24, 2)) == 1
    assert all(int((s["targets"]["depth"] > 0).sum()) == IMAGE_SIZE ** 2 - 64 for s in samples)
    assert all((s["targets"]["segmentation"] < 4).all() for s in samples)


BALANCERS = {
    # GLS is nonlinear: weighting each process's own losses would not give the B-sample step.
    "gls": lambda: GeometricLossStrategy(statistics_every=1),
    # Its log-variances are parameters: they must learn from the global losses too.
    "uncertainty": lambda: UncertaintyWeighting(init_log_variance=0.5),
    "mgda-representation": lambda: MGDA(source="representation", statistics_every=1),
    "pcgrad-parameters": lambda: PCGrad(source="parameters"),
    "upgrad-parameters": lambda: UPGrad(source="parameters"),
    # Nonlinear in the global losses, with a nadir averaged over the first steps.
    "stch": lambda: SmoothTchebycheff(mu=0.5, warmup_steps=1),
    # Per-coordinate statistics of J: J must be global before they are accumulated.
    "excess_mtl": lambda: ExcessMTL(),
    # Combined vectors that are not a weighted sum of the task gradients.
    "config": lambda: ConFIG(),
    "graddrop": lambda: GradDrop(),  # random: the same draw on every process
    "db_mtl": lambda: DBMTL(),  # stateful: per-task averages of past log-loss gradients
    "moco": lambda: MoCo(),
}


STEPS = 4


def _ddp_worker(rank: int, world: int, port: int, names: list[str], out: str) -> None:
    """One of the ``world`` processes: fit a fresh model per balancer, 4 samples per step."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    samples = make_samples()
    for name in names:
        train(make_model(BALANCERS[name]()), samples, Path(out) / f"{name}.pt", devices=world,
              batch_size=4, steps=STEPS)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every balancer's 2-process run (2 x 4 samples per step), from one start of 2 processes."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_ddp_worker, args=(2, _free_port(), list(BALANCERS), str(out)), nprocs=2)
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(BALANCERS))
def test_two_processes_take_the_single_process_step(name: str, ddp_runs: Path,
                                                    tmp_path: Path) -> None:
    model = make_model(BALANCERS[name]())  # the same seed: the weights the workers started from
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()
               if isinstance(v, torch.Tensor)}
    single = train(model, make_samples(), tmp_path / "single.pt", devices=1, batch_size=8,
                   steps=STEPS)
    ddp = torch.load(ddp_runs / f"{name}.pt", weights_only=True)
    for key, value in initial.items():
        assert torch.equal(ddp["initial"][key], value) and torch.equal(single["initial"][key],
                                                                        value), key
    assert_same_run(ddp, single, initial)
    # Both processes hold the same model (the gradient methods average what they write).
    other = torch.load(ddp_runs / f"{name}.pt.rank1", weights_only=True)
    for key, value in ddp["state"].items():
        torch.testing.assert_close(other["state"][key], value, rtol=0, atol=0)
