"""A timm backbone in ``features_only`` mode, with errors a user can act on.

Everything downstream (neck, heads) is sized from what the model reports in
``feature_info``; nothing here hard-codes channel counts. Pretrained weights come from the
hub (``pretrained=True``) or from a local file (``pretrained_file=...``, passed to timm as
``pretrained_cfg_overlay=dict(file=...)``) so that offline users can bring their own.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from torch import nn


class BackboneError(ValueError):
    """Raised when a backbone cannot be built; the message says what to change."""


def _close_model_names(name: str, limit: int = 5) -> list[str]:
    """timm model names that look like ``name`` (for 'did you mean' messages)."""
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=limit, cutoff=0.6)
    if not close:
        close = timm.list_models(f"*{name.split('_')[0]}*")[:limit]
    return close


class Backbone(nn.Module):
    """Multi-scale feature extractor around ``timm.create_model(name, features_only=True)``.

    Args:
        name: any timm model name that supports ``features_only`` (ResNet, EfficientNet,
            MobileNet, RegNet, ConvNeXt, ...).
        pretrained: load the model's pretrained weights (from the hub, or from
            ``pretrained_file`` when given).
        pretrained_file: a local weights file (``.pth``/``.safetensors``) for offline use.
        min_reduction: keep only feature maps at this stride or coarser (4 keeps the
            stride-4 map that the dense heads decode from).
        drop_path_rate: stochastic depth in the backbone (timm), 0 disables it.
        model_kwargs: further keyword arguments of the timm model's constructor, e.g.
            ``{"channels": [32, 64, 128, 256], "stem_width": 32}`` for a half-width ResNet.
    """

    def __init__(
        self,
        name: str = "resnet18",
        pretrained: bool = False,
        pretrained_file: str | None = None,
        min_reduction: int = 4,
        drop_path_rate: float = 0.0,
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if not timm.is_model(name):
            close = _close_model_names(name)
            hint = f" Close timm names: {', '.join(close)}." if close else ""
            raise BackboneError(
                f"Unknown backbone '{name}'.{hint} See timm.list_models() for all names."
            )
        kwargs: dict = dict(model_kwargs or {})
        if pretrained_file is not None:
            if not Path(pretrained_file).is_file():
                raise BackboneError(
                    f"Backbone weights file '{pretrained_file}' does not exist; "
                    "give the path of a .pth or .safetensors file."
                )
            pretrained = True
            kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
        if drop_path_rate > 0:
            kwargs["drop_path_rate"] = drop_path_rate
        try:
            probe = timm.create_model(name, pretrained=False, features_only=False, **kwargs)
        except TypeError as error:
            raise BackboneError(
                f"Backbone '{name}' does not accept these model options {model_kwargs}: {error}"
            ) from error
        reductions = self._probe_reductions(name, probe)
        del probe
        # The last stage at each stride (ViT-like models report many stages at one stride).
        last_at_stride = {r: i for i, r in enumerate(reductions) if r >= min_reduction}
        out_indices = tuple(sorted(last_at_stride.values()))
        if not out_indices:
            raise BackboneError(
                f"Backbone '{name}' has no feature map at stride >= {min_reduction}."
            )
        try:
            self.body = timm.create_model(
                name, pretrained=pretrained, features_only=True, out_indices=out_indices,
                **kwargs,
            )
        except (RuntimeError, AssertionError, NotImplementedError, TypeError) as error:
            raise BackboneError(
                f"Backbone '{name}' does not support features_only ({error}); choose a CNN "
                "family such as resnet18, efficientnet_b0, mobilenetv3_large_100 or regnetx_002."
            ) from error
        self.name = name
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.reductions: list[int] = list(self.body.feature_info.reduction())

    @staticmethod
    def _probe_reductions(name: str, model: nn.Module) -> list[int]:
        """Strides of every feature stage the model reports, before choosing out_indices."""
        info = getattr(model, "feature_info", None)
        if not info:
            raise BackboneError(
                f"Backbone '{name}' does not support features_only (it reports no feature "
                "stages); choose a CNN family such as resnet18, efficientnet_b0, "
                "mobilenetv3_large_100 or regnetx_002."
            )
        return [int(stage["reduction"]) for stage in info]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps from fine to coarse, one per kept stage."""
        return self.body(image)
