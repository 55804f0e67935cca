"""How long each measurement runs: the full suite, and ``--quick`` (under 5 minutes on 2 CPU
cores). Every figure is the median over ``rounds`` of a per-round median over ``steps``
timed calls after ``warmup`` untimed ones."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    rounds: int
    warmup: int
    steps: int
    #: real training batches kept in memory and cycled by the plain loops
    in_memory_batches: int
    #: steps per size in the image-size scaling (a 512 px step is ~16x a 128 px one)
    scaling_steps: int
    #: training batches of the shortened default run whose peak RSS is reported
    rss_train_batches: int
    #: balancing methods measured (None: every config of configs/balancer/)
    balancing_methods: tuple[str, ...] | None
    #: image sizes of the scaling measurement; the first is the reference
    scaling_sizes: tuple[int, ...] = (128, 256, 512)
    #: the balancing benchmark's own quick setting (2 rounds of 5 steps)
    quick: bool = False
    #: training-set sizes of the data-size scaling (each with the sample cache on and off)
    scaling_data_sizes: tuple[int, ...] = (100, 400)
    #: the models whose absolute images/s the ``gpu`` measurement reports (suite/gpu.py)
    gpu_variants: tuple[str, ...] = ("default_128px", "resnet50_512px")


FULL = Settings(rounds=5, warmup=5, steps=20, in_memory_batches=4, scaling_steps=6,
                rss_train_batches=100, balancing_methods=None)
QUICK = Settings(rounds=3, warmup=3, steps=8, in_memory_batches=4, scaling_steps=2,
                 rss_train_batches=30,
                 balancing_methods=("equal", "static", "uncertainty", "famo_fast", "mgda",
                                    "pcgrad", "upgrad@representation"),
                 scaling_data_sizes=(50, 200), quick=True)
