"""W&B image masks and boxes without republishing the run config for each image.

Every ``wandb.Image`` logged with masks or boxes stores its class labels in the run config
through ``Run._add_singleton``, which is meant to write (and publish the whole config to the
W&B service, logging it on the way) only when a value changes. In wandb up to at least 0.31
its check looks the key up in the wrong dictionary, so the old value is never found and the
whole run config is republished for every mask and box set of every image: a validation
epoch's overlays republished the config dozens of times.

:func:`publish_singletons_once` wraps that method on one run so that a value already stored
under its key is not written again; the first value, and any changed one, are stored and
published as before. It is applied by :class:`mtl_lightning.loggers.AutoWandbLogger` when
its run starts, and does nothing to a run without that private method (a newer wandb that
renamed it, or Lightning's dummy experiment on non-zero ranks).
"""

from __future__ import annotations

import functools
from typing import Any

#: marks the wrapped ``_add_singleton`` (a W&B run refuses new attributes of its own)
_WRAPPED = "_mtl_singletons_once"


def publish_singletons_once(run: Any) -> bool:
    """Make ``run._add_singleton`` skip values it already holds; True when wrapped."""
    original = getattr(run, "_add_singleton", None)
    if original is None or getattr(original, _WRAPPED, False) or not hasattr(run, "_config"):
        return False

    @functools.wraps(original)
    def add_singleton(data_type: str, key: str, value: Any) -> None:
        try:
            stored = run._config["_wandb"][data_type][key]
        except (KeyError, TypeError):
            stored = None
        if stored == {"type": data_type, "key": key, "value": value}:
            return  # unchanged: nothing to store or publish
        original(data_type, key, value)

    setattr(add_singleton, _WRAPPED, True)
    run._add_singleton = add_singleton
    return True
