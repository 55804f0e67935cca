"""What every loader worker does when it starts.

A worker is forked from the training process and inherits its hundreds of thousands of
Python objects (torch, Lightning, the model, the config). Python's cyclic garbage collector
would walk all of them again and again while the worker allocates the small objects of
decoding and transforms, a large part of a sample's time (docs/performance.md).
``gc.freeze()`` moves the inherited objects to a generation that collections skip; what the
worker allocates afterwards is collected as usual. It also keeps the collector from writing
to the inherited pages, which would copy them (copy-on-write) in every worker.
"""

from __future__ import annotations

import gc


def freeze_in_worker(worker_id: int) -> None:
    """``worker_init_fn`` of every data loader of the project."""
    gc.freeze()
