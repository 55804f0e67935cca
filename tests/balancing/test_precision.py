"""Balancing under mixed precision, gradient accumulation and gradient clipping.

A gradient weighting writes ``.grad`` itself in :meth:`MultiTaskModule.backward` (the task
gradients are not one ``loss.backward()``), so it must leave ``.grad`` as Lightning's precision
plugin and loops expect: multiplied by the 16-mixed loss scale (the plugin unscales it before
clipping and stepping) and divided by the accumulation factor.

16-mixed on CPU: ``Trainer(accelerator="cpu", precision="16-mixed")`` is silently turned into
bf16-mixed by Lightning 2.6 (with a warning), so these tests pass Lightning's
``MixedPrecision("16-mixed", "cpu", scaler)`` plugin directly: real float16 autocast on CPU and
torch's CPU ``GradScaler``, the same code path as 16-mixed on a GPU.

Gradient accumulation with a gradient weighting averages the *combined* gradients of the
micro-batches, each weighted from its own Gramian (the method sees micro-batches, not the
accumulated batch); with a loss that is a sample mean and fixed weights it equals the step on
the whole batch, which is checked with static weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins import MixedPrecision
from torch.utils.data import DataLoader

from mtl_lightning.balancing import (
    MGDA,
    Balancer,
    ConFIG,
    GradNorm,
    PCGrad,
    StaticWeighting,
    UncertaintyWeighting,
)
from mtl_lightning.module import MultiTaskModule

from .test_ddp_exact import FreezeBatchNorm, make_model, make_samples, relative_error

GRADIENT_METHODS: dict[str, Callable[[], Balancer]] = {
    "mgda-representation": lambda: MGDA(source="representation"),
    "pcgrad-parameters": lambda: PCGrad(source="parameters"),
    # A combined vector, not a weighted sum: written with the loss scale all the same.
    "config-parameters": lambda: ConFIG(),
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


class Capture(Callback):
    """Records, per optimizer step, the gradients Lightning's loop sees at each stage.

    ``backward``: after the (last) backward of the step, before unscaling (times the loss
    scale); ``before_step``: after unscaling, before clipping (``on_before_optimizer_step``);
    ``at_step``: what the optimizer applied (after clipping), from an optimizer post-hook
    (a pre-hook would run too early: Lightning runs the forward and backward as the closure
    *inside* ``optimizer.step``).
    Also the loss of every batch and the first conv's output dtype (autocast at work)."""

    def __init__(self) -> None:
        self.backward: list[dict[str, torch.Tensor]] = []
        self.before_step: list[dict[str, torch.Tensor]] = []
        self.at_step: list[dict[str, torch.Tensor]] = []
        self.losses: list[float] = []
        self.dtypes: set[torch.dtype] = set()

    @staticmethod
    def _grads(module: LightningModule) -> dict[str, torch.Tensor]:
        return {n: p.grad.detach().clone() for n, p in module.named_parameters()
                if p.grad is not None}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.optimizers[0].register_step_post_hook(
            lambda *_: self.at_step.append(self._grads(pl_module)))
        first_conv = next(m for m in pl_module.modules() if isinstance(m, torch.nn.Conv2d))
        first_conv.register_forward_hook(lambda _m, _i, out: self.dtypes.add(out.dtype))

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.backward.append(self._grads(pl_module))

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule,
                                 optimizer: Any) -> None:
        self.before_step.append(self._grads(pl_module))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


def fit(model: MultiTaskModule, samples: list[dict[str, Any]], batch_size: int, steps: int,
        *callbacks: Callback, **trainer_kwargs: Any) -> Capture:
    capture = Capture()
    trainer = Trainer(
        accelerator="cpu", max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[capture, *callbacks], **trainer_kwargs,
    )
    trainer.fit(model, DataLoader(samples, batch_size=batch_size))
    return capture


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([grads[k].reshape(-1).float() for k in sorted(grads)])


def fp16_plugin(scale: float) -> MixedPrecision:
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=scale))


def test_lightning_turns_16_mixed_on_cpu_into_bf16() -> None:
    """Why the 16-mixed tests below pass the plugin themselves."""
    with pytest.warns(UserWarning, match="bf16-mixed"):
        trainer = Trainer(accelerator="cpu", precision="16-mixed", logger=False)
    assert trainer.precision == "bf16-mixed"


BF16_BALANCERS: dict[str, Callable[[], Balancer]] = {
    **GRADIENT_METHODS, "uncertainty": UncertaintyWeighting,
}


@pytest.mark.parametrize("name", list(BF16_BALANCERS))
def test_bf16_mixed_trains(name: str) -> None:
    model = make_model(BF16_BALANCERS[name]())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    capture = fit(model, make_samples(16), 4, 3, precision="bf16-mixed")
    assert capture.dtypes == {torch.bfloat16}
    assert len(capture.losses) == 3 and all(torch.isfinite(torch.tensor(capture.losses)))
    for grads in capture.at_step:
        assert torch.isfinite(flat(grads)).all()
    after = dict(model.named_parameters())
    unchanged = [n for n, p in after.items() if torch.equal(p, before[n])]
    assert not unchanged, f"not trained: {unchanged[:5]}"
    assert all(p.dtype == torch.float32 for p in after.values())


@pytest.mark.parametrize("name", list(GRADIENT_METHODS))
def test_written_gradients_carry_the_loss_scale(name: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With a loss scale S (faked: 32-true, so nothing unscales), ``backward`` writes exactly
    S times the gradient it writes with scale 1: the precision plugin's unscaling then
    restores it. S is a power of 2, so the scaling is exact in floating point."""
    samples = make_samples(8)
    plain = fit(make_model(GRADIENT_METHODS[name]()), samples, 8, 1)
    scale = 2.0 ** 10
    monkeypatch.setattr(MultiTaskModule, "_loss_scale", lambda self: scale)
    scaled = fit(make_model(GRADIENT_METHODS[name]()), samples, 8, 1)
    want, got = plain.before_step[0], scaled.before_step[0]
    assert got.keys() == want.keys() and len(want) > 50
    for key in want:
        torch.testing.assert_close(got[key], scale * want[key], rtol=1e-5, atol=1e-9,
                                   msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("name", list(GRADIENT_METHODS))
def test_16_mixed_on_cpu_gives_the_32_bit_gradient(name: str) -> None:
    """Real 16-mixed (float16 autocast, CPU GradScaler with scale 2^8): ``.grad`` after the
    backward is 2^8 times the gradient the optimizer gets after unscaling, which matches the
    32-bit gradient up to float16 rounding; no overflow, so the step is taken.

    Float16 autocast alone moves this random-init model's gradient by ~6% (relative norm; the
    same with static weights and Lightning's own backward, mostly BatchNorm weights), so the
    bound is loose; a gradient off by the loss scale would be ~100% off."""
    samples = make_samples(8)
    full = fit(make_model(GRADIENT_METHODS[name]()), samples, 8, 1)
    model = make_model(GRADIENT_METHODS[name]())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plugin = fp16_plugin(2.0 ** 8)
    half = fit(model, samples, 8, 1, plugins=[plugin])
    assert half.dtypes == {torch.float16}
    assert plugin.scaler.get_scale() == 2.0 ** 8  # no inf/nan found: not lowered
    scaled, unscaled = flat(half.backward[0]), flat(half.before_step[0])
    assert relative_error(scaled, 2.0 ** 8 * unscaled) < 1e-6
    reference = flat(full.before_step[0])
    error = relative_error(unscaled, reference)
    assert error < 0.2, f"16-mixed vs 32-true gradient: {error:.2e}"
    assert float(torch.nn.functional.cosine_similarity(unscaled, reference, dim=0)) > 0.99
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2  # the step was applied


def test_gradient_clipping_under_16_mixed_clips_the_unscaled_gradient() -> None:
    """Lightning clips what the balancer wrote, after unscaling: the applied gradient is the
    unscaled one rescaled to norm ``gradient_clip_val``."""
    clip = 1e-2
    capture = fit(make_model(MGDA(source="representation")), make_samples(8), 8, 1,
                  plugins=[fp16_plugin(2.0 ** 8)], gradient_clip_val=clip)
    before, applied = flat(capture.before_step[0]), flat(capture.at_step[0])
    assert before.norm() > 10 * clip  # clipping has work to do
    assert float(applied.norm()) == pytest.approx(clip, rel=1e-4)
    assert relative_error(applied, before * clip / before.norm()) < 1e-4


@pytest.mark.parametrize("name", list(GRADIENT_METHODS))
def test_accumulation_averages_the_micro_batch_updates(name: str) -> None:
    """``accumulate_grad_batches=2``: the optimizer gets the mean of what the method computes
    on each micro-batch alone (Lightning divides the loss by 2; ``backward`` divides what it
    writes by the same factor)."""
    samples = make_samples(8)
    accumulated = fit(make_model(GRADIENT_METHODS[name]()), samples, 4, 1,
                      accumulate_grad_batches=2)
    assert len(accumulated.backward) == 2 and len(accumulated.at_step) == 1
    halves = [fit(make_model(GRADIENT_METHODS[name]()), part, 4, 1).at_step[0]
              for part in (samples[:4], samples[4:])]
    want = {k: (halves[0][k] + halves[1][k]) / 2 for k in halves[0]}
    assert relative_error(flat(accumulated.at_step[0]), flat(want)) < 1e-5


def test_accumulation_with_a_sample_mean_loss_equals_the_whole_batch() -> None:
    """Fixed weights and sample-mean losses: 2 accumulated micro-batches of 4 take the step of
    one batch of 8 (BatchNorm frozen, as its batch statistics would differ)."""
    samples = make_samples(8)
    accumulated = fit(make_model(StaticWeighting()), samples, 4, 1, FreezeBatchNorm(),
                      accumulate_grad_batches=2)
    whole = fit(make_model(StaticWeighting()), samples, 8, 1, FreezeBatchNorm())
    assert relative_error(flat(accumulated.at_step[0]), flat(whole.at_step[0])) < 1e-5


OVERFLOW_METHODS: dict[str, Callable[[], Balancer]] = {**GRADIENT_METHODS, "gradnorm": GradNorm}


@pytest.mark.parametrize("name", list(OVERFLOW_METHODS))
def test_16_mixed_overflow_skips_the_step_and_spares_the_balancer(name: str) -> None:
    """A loss scale too large for float16 makes the task gradients overflow: the scaler finds
    the inf, skips the step and halves the scale, as for an ordinary backward, and the method
    is not asked for weights on the non-finite Gramian (GradNorm's weights would become NaN
    and stay NaN)."""
    model = make_model(OVERFLOW_METHODS[name]())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    initial = {k: v.clone() for k, v in model.balancer.state_dict().items()
               if isinstance(v, torch.Tensor)}
    plugin = fp16_plugin(2.0 ** 40)
    fit(model, make_samples(8), 8, 1, plugins=[plugin])
    assert plugin.scaler.get_scale() == 2.0 ** 39
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    for key, value in initial.items():
        assert torch.equal(model.balancer.state_dict()[key], value), key
