"""Cross-stitch networks (Misra, Shrivastava, Gupta & Hebert, CVPR 2016): soft sharing."""

from __future__ import annotations

import torch
from timm.models._features import FeatureListNet
from torch import nn

from mtl_lightning.models.architectures.base import (
    Architecture,
    ArchitectureOutput,
    BackboneFactory,
    ParameterRoles,
)
from mtl_lightning.models.backbone import BackboneError
from mtl_lightning.models.neck import FeaturePyramid


class CrossStitchUnit(nn.Module):
    """``x_i' = sum_j alpha_ij * x_j``, with a learned ``alpha`` per channel and task pair.

    Initialised to ``self_weight`` on the diagonal and ``other_weight`` elsewhere (Misra et
    al. found initialisations favouring each task's own stream, e.g. 0.9 / 0.1, train best).
    """

    def __init__(self, num_tasks: int, channels: int, self_weight: float,
                 other_weight: float) -> None:
        super().__init__()
        alpha = torch.full((num_tasks, num_tasks, channels), other_weight)
        alpha[range(num_tasks), range(num_tasks)] = self_weight
        self.alpha = nn.Parameter(alpha)

    def forward(self, streams: list[torch.Tensor]) -> list[torch.Tensor]:
        stacked = torch.stack(streams)  # T, B, C, H, W
        mixed = torch.einsum("ijc,jbchw->ibchw", self.alpha.to(stacked.dtype), stacked)
        return list(mixed.unbind(0))


class CrossStitch(Architecture):
    """One backbone per task, mixed by cross-stitch units after every kept stage.

    Each task has its own network (backbone and neck); after each stage the task streams
    exchange features through a :class:`CrossStitchUnit`. Supported backbones: hierarchical
    timm models whose ``features_only`` extractor runs stage by stage on channels-first maps
    (``FeatureListNet``: ResNet, RegNet, ConvNeXt, FastViT, MaxViT, ...); EfficientNet,
    MobileNet, channels-last Swin and plain ViTs are refused with one sentence.
    No representation is shared, so gradient balancers take task gradients at the
    parameters (``source: parameters``).

    Args:
        self_weight: initial weight of a task's own stream.
        other_weight: initial weight of each other stream (default
            ``(1 - self_weight) / (number of tasks - 1)``).
    """

    shares_representation = False

    def __init__(self, tasks: list[str], make_backbone: BackboneFactory, neck_channels: int,
                 pyramid_levels: dict[str, tuple[int, ...] | None] | None = None,
                 self_weight: float = 0.9, other_weight: float | None = None) -> None:
        super().__init__(tasks, make_backbone, neck_channels, pyramid_levels)
        self.backbones = nn.ModuleDict({task: make_backbone() for task in tasks})
        first = self.backbones[tasks[0]]
        if not isinstance(first.body, FeatureListNet) or first.plain or first.channels_last:
            kind = ("a plain ViT" if first.plain else "channels-last" if first.channels_last
                    else type(first.body).__name__)
            raise BackboneError(
                f"cross_stitch needs a backbone whose features run stage by stage on "
                f"channels-first maps (timm's FeatureListNet); '{first.name}' is {kind}. Use "
                "e.g. resnet18, regnetx_002 or convnext_atto, or model.architecture hard, mtan "
                "or ensemble (which take every backbone)."
            )
        self.channels, self.strides = first.channels, first.reductions
        if other_weight is None:
            other_weight = (1.0 - self_weight) / max(len(tasks) - 1, 1)
        self.stitches = nn.ModuleList(
            CrossStitchUnit(len(tasks), c, self_weight, other_weight) for c in self.channels
        )
        self.necks = nn.ModuleDict({
            task: FeaturePyramid(self.channels, self.strides, neck_channels,
                                 levels=self.levels_of([task]))
            for task in self.pyramid_tasks
        })

    def forward(self, image: torch.Tensor) -> ArchitectureOutput:
        bodies = [self.backbones[task].body for task in self.task_names]
        streams = [image] * len(bodies)
        maps: list[list[torch.Tensor]] = [[] for _ in bodies]
        stage = 0
        for name in bodies[0]:  # an nn.ModuleDict of stem and stages, in order
            streams = [body[name](x) for body, x in zip(bodies, streams)]
            if name in bodies[0].return_layers:
                streams = self.stitches[stage](streams)
                stage += 1
                for collected, x in zip(maps, streams):
                    collected.append(x)
        return self.per_task_output(maps, self.necks)

    def roles(self) -> ParameterRoles:
        trunk = list(self.backbones.parameters()) + list(self.stitches.parameters())
        return ParameterRoles(
            trunk, [], {task: list(neck.parameters()) for task, neck in self.necks.items()}
        )
