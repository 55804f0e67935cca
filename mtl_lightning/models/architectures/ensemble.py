"""Model ensemble: independent single-task networks behind the multi-task interface."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mtl_lightning.models.architectures.base import (
    Architecture,
    ArchitectureOutput,
    BackboneFactory,
    ParameterRoles,
)
from mtl_lightning.models.neck import FeaturePyramid


class Ensemble(Architecture):
    """One backbone and neck per task, nothing shared: the single-task baselines, side by side.

    Outputs, metrics and callbacks are those of any multi-task model, so an ensemble of
    single-task models is compared with hard or soft sharing on equal terms (and costs one
    backbone per task; any backbone). Members are trained jointly (each only receives its own task's
    gradient) or loaded from single-task runs' checkpoints with ``members``.

    Args:
        members: task -> checkpoint of a ``hard`` single-task (or multi-task) run whose
            backbone, neck and that task's head become this task's member.
    """

    shares_representation = False

    def __init__(self, tasks: list[str], make_backbone: BackboneFactory, neck_channels: int,
                 pyramid_levels: dict[str, tuple[int, ...] | None] | None = None,
                 members: dict[str, str] | None = None) -> None:
        super().__init__(tasks, make_backbone, neck_channels, pyramid_levels)
        self.backbones = nn.ModuleDict({task: make_backbone() for task in tasks})
        first = self.backbones[tasks[0]]
        self.channels, self.strides = first.channels, first.reductions
        self.necks = nn.ModuleDict({
            task: FeaturePyramid(self.channels, self.strides, neck_channels,
                                 levels=self.levels_of([task]))
            for task in self.pyramid_tasks
        })
        unknown = set(members or {}) - set(tasks)
        if unknown:
            raise ValueError(f"ensemble members name tasks that are not trained: "
                             f"{sorted(unknown)}; tasks are {sorted(tasks)}.")
        self.members = dict(members or {})

    def forward(self, image: torch.Tensor) -> ArchitectureOutput:
        per_task = [self.backbones[task](image) for task in self.task_names]
        return self.per_task_output(per_task, self.necks)

    def roles(self) -> ParameterRoles:
        return ParameterRoles(
            list(self.backbones.parameters()), [],
            {task: list(neck.parameters()) for task, neck in self.necks.items()},
        )

    def member_state(self, task: str, path: str) -> dict[str, torch.Tensor]:
        """State-dict entries (module-level keys) that load ``task``'s member from ``path``."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"Ensemble member checkpoint for {task} not found: {path}")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = checkpoint.get("state_dict", {})
        renames = {
            "architecture.backbone.": f"architecture.backbones.{task}.",
            "architecture.neck.": f"architecture.necks.{task}.",
            f"tasks.{task}.": f"tasks.{task}.",
        }
        loaded = {}
        for key, value in state.items():
            for old, new in renames.items():
                if key.startswith(old):
                    loaded[new + key[len(old):]] = value
        if not any(k.startswith(f"tasks.{task}.") for k in loaded) or not any(
            k.startswith(f"architecture.backbones.{task}.") for k in loaded
        ):
            raise ValueError(
                f"Ensemble member checkpoint {path} has no hard-sharing backbone and "
                f"{task} head; give a checkpoint of a hard run that trained {task}."
            )
        return loaded
