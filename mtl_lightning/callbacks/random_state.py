"""Random number generator states in checkpoints, so that a resumed run draws what the
uninterrupted run would have drawn.

Lightning saves the model, optimizer, scheduler and loop states but not the random number
generators: a run resumed at an epoch boundary starts its next epoch from the state
``seed_everything`` left at process start, not from where the interrupted run stood, so the
training order (``RandomSampler`` seeds itself from torch's global generator), the
augmentations (torchvision's random transforms use it too) and dropout all differ.

This callback stores torch's CPU generator, the current CUDA device's generator, NumPy's and
Python's global generators in every checkpoint (as tensors and plain Python values, so the
checkpoint still loads with ``weights_only=True``), and puts them back when a checkpoint is
restored. Lightning restores callbacks before the training data loader is created, and
nothing in between draws random numbers, so the first resumed epoch matches.

Limits, by construction:

- exact at epoch boundaries; a checkpoint taken in the middle of an epoch resumes, but the
  epoch's remaining batches are not the ones the interrupted run would have seen (PyTorch's
  ``DataLoader`` cannot be fast-forwarded);
- with ``num_workers > 0`` and persistent workers, each worker's generator lives in the worker
  process and is not saved: augmentations after a resume then differ;
- under DDP the checkpoint holds rank 0's states, restored on every rank: exact because
  ``seed_everything`` gives every rank the same seed and every rank draws as many numbers.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback


def collect_states() -> dict[str, Any]:
    """The current states of torch's, CUDA's (current device), NumPy's and Python's
    generators, in types that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "position": int(position), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def restore_states(states: dict[str, Any]) -> None:
    """Put back states returned by :func:`collect_states`."""
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state((
        numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
        numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"],
    ))
    python_state = states["python"]
    random.setstate(
        (python_state["version"], tuple(python_state["internal"]), python_state["gauss"])
    )
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


class RandomState(Callback):
    """Saves the random generators' states in checkpoints and restores them on resume."""

    def state_dict(self) -> dict[str, Any]:
        return collect_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            restore_states(state_dict)
