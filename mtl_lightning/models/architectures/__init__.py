"""How tasks share parameters: hard sharing, cross-stitch, MTAN, an ensemble, gated experts
(MMoE, CGC), or a task-interaction decoder (PAD-Net, MTI-Net).

``model.architecture`` names one of :data:`ARCHITECTURES`; ``model.architecture_options``
passes its options (e.g. ``{"self_weight": 0.9}`` for cross-stitch).
"""

from __future__ import annotations

from typing import Any

from mtl_lightning.models.architectures.base import (
    Architecture,
    ArchitectureOutput,
    BackboneFactory,
    ParameterRoles,
)
from mtl_lightning.models.architectures.cross_stitch import CrossStitch, CrossStitchUnit
from mtl_lightning.models.architectures.ensemble import Ensemble
from mtl_lightning.models.architectures.gated_experts import GatedExperts
from mtl_lightning.models.architectures.hard import HardSharing
from mtl_lightning.models.architectures.mtan import AttentionUnit, MultiTaskAttention
from mtl_lightning.models.architectures.mti_net import MTINet
from mtl_lightning.models.architectures.pad_net import PADNet

ARCHITECTURES: dict[str, type[Architecture]] = {
    "hard": HardSharing,
    "cross_stitch": CrossStitch,
    "mtan": MultiTaskAttention,
    "ensemble": Ensemble,
    "mmoe": GatedExperts,
    "pad_net": PADNet,
    "mti_net": MTINet,
}


def build_architecture(name: str, tasks: list[str], make_backbone: BackboneFactory,
                       neck_channels: int, options: dict[str, Any] | None = None,
                       pyramid_levels: dict[str, tuple[int, ...] | None] | None = None,
                       ) -> Architecture:
    """The architecture ``name`` for ``tasks``; unknown names and options get one sentence."""
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown model.architecture '{name}'; choose one of "
                         f"{', '.join(ARCHITECTURES)}.")
    try:
        return ARCHITECTURES[name](tasks, make_backbone, neck_channels,
                                   pyramid_levels=pyramid_levels, **(options or {}))
    except TypeError as error:
        raise ValueError(f"model.architecture_options {options} do not fit '{name}': "
                         f"{error}") from error


__all__ = [
    "ARCHITECTURES", "Architecture", "ArchitectureOutput", "AttentionUnit", "BackboneFactory",
    "CrossStitch", "CrossStitchUnit", "Ensemble", "GatedExperts", "HardSharing", "MTINet",
    "MultiTaskAttention", "PADNet", "ParameterRoles", "build_architecture",
]
