"""Keep Python's garbage collector off the objects that live for the whole run.

A training process holds hundreds of thousands of Python objects once torch, Lightning, the
model and the config are loaded. Every full collection walks all of them, and collections are
triggered by allocation counts, so a step that allocates many small objects (hooks, logging
dictionaries, transforms) pays for a walk over everything at random. ``gc.freeze()`` moves
the objects alive at that moment into a permanent generation that collections skip; objects
made later are still collected as usual. (Loader workers, which inherit the parent's objects
through ``fork``, freeze on their own: :func:`mtl_lightning.data.workers.freeze_in_worker`.)

The callback freezes at ``setup`` (model, data module and trainer are built) and unfreezes
at ``teardown``, so several runs in one process (notebooks, sweeps) collect what an
earlier run left behind.
"""

from __future__ import annotations

import gc

from lightning.pytorch import Callback, LightningModule, Trainer


class FrozenGarbageCollector(Callback):
    """``gc.freeze()`` for the duration of a fit, validate, test or predict.

    Args:
        enabled: freeze (``false`` leaves the collector alone).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._frozen = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.enabled and not self._frozen:
            gc.collect()
            gc.freeze()
            self._frozen = True

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._frozen:
            gc.unfreeze()
            self._frozen = False
