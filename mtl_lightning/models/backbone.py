"""Any timm backbone as feature maps at strides 4 to 32, with errors a user can act on.

Two kinds of timm models, told apart by what the model itself reports (``feature_info``):

- **hierarchical** (ResNet, RegNet, EfficientNet, MobileNet, ConvNeXt, Swin, MaxViT, Hiera,
  FastViT, ...): stages at growing strides. timm's ``features_only`` extractor gives them;
  the last stage at each stride from ``min_reduction`` on is kept. Models whose features come
  channels-last (Swin: ``NHWC``) are permuted to ``NCHW``.
- **plain** (ViT, DeiT, EVA, ...: every block at the patch stride): the token maps of the last
  block (or chosen blocks) through ``forward_intermediates`` (timm's ``FeatureGetterNet``),
  turned into strides 4 to 32 by a :class:`SimpleFeaturePyramid` (ViTDet) with parameters of
  its own.

Either way the model is built once, with ``features_only=True``, and everything downstream
(neck, heads) is sized from what it reports; nothing here hard-codes channel counts.

The *representation* that representation-level balancing differentiates through is what
:meth:`Backbone.encode` returns: the stage maps of a hierarchical model, the token maps of a
plain one (the pyramid's input). :meth:`Backbone.adapt` (the simple feature pyramid, or
nothing) sits above it.

Input size: a model that can take any size is built so (timm's ``dynamic_img_size``: ViT,
DeiT, EVA, Swin); one built for a fixed size (Hiera, MaxViT, ...) gets ``image_size`` as its
``img_size`` and refuses another size with one sentence naming ``model.image_size``.
Pretrained weights come from the hub (``pretrained=True``) or from a local file
(``pretrained_file=...``, passed to timm as ``pretrained_cfg_overlay=dict(file=...)``) so
offline users can bring their own; the input statistics (mean, std, interpolation) come from
the model's pretrained config (:attr:`Backbone.data_config`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from timm.layers import Format
from timm.models import load_state_dict
from timm.models._features import FeatureGetterNet, FeatureInfo
from torch import nn

from mtl_lightning.models.simple_feature_pyramid import PYRAMID_STRIDES, SimpleFeaturePyramid

CNN_HINT = "resnet18, efficientnet_b0, convnext_atto or swin_tiny_patch4_window7_224"
#: timm model arguments set when the model takes them (and dropped when it does not).
SIZE_OPTIONS = ("dynamic_img_size", "img_size")


class BackboneError(ValueError):
    """Raised when a backbone cannot be built or fed; the message says what to change."""


def _close_model_names(name: str, limit: int = 5) -> list[str]:
    """timm model names that look like ``name`` (for 'did you mean' messages)."""
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=limit, cutoff=0.6)
    if not close:
        close = timm.list_models(f"*{name.split('_')[0]}*")[:limit]
    return close


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _flat_key(key: str) -> str:
    """A state-dict key as both the full model and its feature extractor name it (timm's
    extractors flatten ``layers.0`` to ``layers_0`` and wrap the model as ``model.``)."""
    return key.removeprefix("model.").replace(".", "_")


def _check_weights_file(path: str, name: str) -> set[str]:
    """A weights file must exist and hold a state dict (name -> tensor); its keys."""
    if not Path(path).is_file():
        raise BackboneError(f"Backbone weights file '{path}' does not exist; give the path of "
                            "a .pth or .safetensors file.")
    try:
        state = load_state_dict(path)
    except Exception as error:  # unpickling and safetensors fail in many ways on other files
        raise BackboneError(
            f"Backbone weights file '{path}' could not be read as a state dict "
            f"({type(error).__name__}: {_first_line(error)}); save one with "
            f"torch.save(timm.create_model('{name}').state_dict(), path).") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(
            f"Backbone weights file '{path}' is not a state dict (name -> tensor); save one "
            f"with torch.save(timm.create_model('{name}').state_dict(), path).")
    return {_flat_key(key) for key in state}


class Backbone(nn.Module):
    """Multi-scale feature extractor around ``timm.create_model(name, features_only=True)``.

    Args:
        name: any timm model name: a hierarchical model (CNNs, Swin, ...) or a plain ViT.
        pretrained: load the model's pretrained weights (from the hub, or from
            ``pretrained_file`` when given).
        pretrained_file: a local weights file (``.pth``/``.safetensors``) for offline use: a
            state dict of this timm model.
        min_reduction: keep only feature maps at this stride or coarser (4 keeps the
            stride-4 map that the dense heads decode from).
        drop_path_rate: stochastic depth in the backbone (timm), 0 disables it.
        image_size: input size for a model built for one size (timm's ``img_size``); models
            that take any size ignore it.
        vit_blocks: blocks of a plain ViT whose token maps build the pyramid: one (every
            level from it; default: the last block) or four (one per level, fine to coarse).
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
        image_size: int | None = None,
        vit_blocks: list[int] | None = None,
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if not timm.is_model(name):
            close = _close_model_names(name)
            hint = f" Close timm names: {', '.join(close)}." if close else ""
            raise BackboneError(
                f"Unknown backbone '{name}'.{hint} See timm.list_models() for all names."
            )
        self.name = name
        kwargs: dict[str, Any] = dict(model_kwargs or {})
        file_keys: set[str] = set()
        if pretrained_file is not None:
            file_keys = _check_weights_file(pretrained_file, name)
            pretrained = True
            kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
        if drop_path_rate > 0:
            kwargs["drop_path_rate"] = drop_path_rate
        optional = {"dynamic_img_size": True}
        if image_size is not None:
            optional["img_size"] = image_size
        self.body = self._create(kwargs, optional, pretrained, pretrained_file)
        if not isinstance(getattr(self.body, "feature_info", None), FeatureInfo):
            raise self._no_features(ValueError("it reports no feature stages"))
        if pretrained_file is not None and not file_keys & {
                _flat_key(k) for k in self.body.state_dict()}:
            # timm loads some families (ViTs) non-strictly: a foreign file would load nothing.
            raise BackboneError(
                f"Backbone weights file '{pretrained_file}' holds no weights of '{name}' (none "
                "of its keys is a parameter of that model); give a state dict of that timm "
                "model or choose the backbone it was saved from.")
        self.dynamic_size = bool(self._accepted.get("dynamic_img_size"))
        info = self.body.feature_info
        all_reductions = [int(stage["reduction"]) for stage in info.info]
        self.plain = len(info.info) > 1 and len(set(all_reductions)) == 1
        if self.plain:
            self._select_blocks(vit_blocks, all_reductions[0])
        else:
            if vit_blocks is not None:
                raise BackboneError(
                    f"model.vit_blocks applies to plain ViTs; '{name}' is a hierarchical model "
                    "(remove the option).")
            self._select_stages(all_reductions, min_reduction)
        cfg = dict(getattr(self.body, "pretrained_cfg", None) or {})
        #: mean, std, interpolation, ... the model was pretrained with (timm's data config)
        self.data_config: dict[str, Any] = resolve_data_config({}, pretrained_cfg=cfg)
        fixed = cfg.get("fixed_input_size", False) and not self.dynamic_size
        size = image_size if self._accepted.get("img_size") else None
        #: the only (height, width) the model takes, or None for any size
        self.fixed_size: tuple[int, int] | None = (
            ((size, size) if size else tuple(cfg.get("input_size", (3, 224, 224))[-2:]))
            if fixed else None)

    # ------------------------------------------------------------------ building
    def _create(self, kwargs: dict[str, Any], optional: dict[str, Any], pretrained: bool,
                pretrained_file: str | None) -> nn.Module:
        """``timm.create_model(features_only=True)`` with the size options the model takes."""
        self._accepted = dict(optional)
        while True:
            try:
                return timm.create_model(self.name, pretrained=pretrained, features_only=True,
                                         **kwargs, **self._accepted)
            except TypeError as error:
                refused = [k for k in self._accepted if f"'{k}'" in str(error)]
                if not refused:
                    raise BackboneError(
                        f"Backbone '{self.name}' does not accept the model options "
                        f"{sorted(kwargs)}: {_first_line(error)}") from error
                for key in refused:
                    del self._accepted[key]
            except (RuntimeError, KeyError) as error:
                if pretrained_file is not None and (
                        "state_dict" in str(error) or isinstance(error, KeyError)):
                    raise BackboneError(
                        f"Backbone weights file '{pretrained_file}' holds no weights of "
                        f"'{self.name}' ({_first_line(error)}); give a state dict of that "
                        "timm model or choose the backbone it was saved from.") from None
                raise self._no_features(error) from error
            except (AssertionError, NotImplementedError, AttributeError) as error:
                if "last-n" in str(error) and "out_indices" not in kwargs:
                    kwargs["out_indices"] = 1  # a ViT shallower than timm's default last 3
                    continue
                raise self._no_features(error) from error

    def _no_features(self, error: BaseException) -> BackboneError:
        return BackboneError(
            f"Backbone '{self.name}' does not support features_only ({_first_line(error)}); "
            f"choose a model such as {CNN_HINT} or vit_tiny_patch16_224.")

    def _select_stages(self, reductions: list[int], min_reduction: int) -> None:
        """Keep the last stage at each stride >= ``min_reduction`` (in the timm extractor)."""
        last_at_stride = {r: i for i, r in enumerate(reductions) if r >= min_reduction}
        indices = sorted(last_at_stride.values())
        if not indices:
            raise BackboneError(
                f"Backbone '{self.name}' has no feature map at stride >= {min_reduction}.")
        body = self.body
        built = list(body.feature_info.out_indices)
        missing = set(indices) - set(built)
        if missing:
            raise BackboneError(
                f"Backbone '{self.name}' does not extract stages {sorted(missing)} by default; "
                f"pass model.backbone_kwargs {{out_indices: {indices}}}.")
        if isinstance(body, FeatureGetterNet):
            body.out_indices = indices
        elif hasattr(body, "return_layers"):  # timm's FeatureDictNet / FeatureListNet
            body.return_layers = {k: v for k, v in body.return_layers.items()
                                  if int(v) in indices}
            built = indices
        body.feature_info = body.feature_info.from_other(indices)
        #: positions of the kept maps in what the extractor returns
        self._keep = [built.index(i) for i in indices] if built != indices else None
        self.channels_last = getattr(body, "output_fmt", Format.NCHW) == Format.NHWC
        self.channels: list[int] = list(body.feature_info.channels())
        self.reductions: list[int] = list(body.feature_info.reduction())
        self.encoder_channels = list(self.channels)
        self.pyramid: SimpleFeaturePyramid | None = None

    def _select_blocks(self, blocks: list[int] | None, stride: int) -> None:
        """Token maps of ``blocks`` (default: the last) into a simple feature pyramid."""
        body = self.body
        depth = len(body.feature_info.info)
        blocks = [-1] if blocks is None else list(blocks)
        if len(blocks) not in (1, 4) or not all(-depth <= b < depth for b in blocks):
            raise BackboneError(
                f"model.vit_blocks {blocks} must name one or four blocks of '{self.name}' "
                f"(0 to {depth - 1}, or negative from the end).")
        if stride not in PYRAMID_STRIDES:
            raise BackboneError(
                f"Backbone '{self.name}' has patch size {stride}; the simple feature pyramid "
                "needs 8, 16 or 32: set model.backbone_kwargs {patch_size: 16} (timm resamples "
                "pretrained patch embeddings).")
        if not isinstance(body, FeatureGetterNet):
            raise BackboneError(
                f"Backbone '{self.name}' keeps one stride in every stage but has no "
                f"forward_intermediates extractor; choose a model such as {CNN_HINT}.")
        # Prune the blocks after the last one read (timm resolves negative indices here).
        indices = list(body.model.prune_intermediate_layers(
            blocks, prune_norm=True, prune_head=True))
        body.out_indices = sorted(set(indices))
        body.feature_info = body.feature_info.from_other(body.out_indices)
        self._blocks = indices
        self._keep = None
        self.channels_last = False
        channels = int(body.feature_info.info[indices[0]]["num_chs"])
        self.encoder_channels = [channels] * len(sorted(set(indices)))
        self.pyramid = SimpleFeaturePyramid(channels, stride)
        self.patch_stride = stride
        self.channels = list(self.pyramid.channels)
        self.reductions = list(self.pyramid.strides)

    # ------------------------------------------------------------------ running
    @property
    def timm_model(self) -> nn.Module:
        """The timm network whose parameters are the (pretrained) backbone, for optimiser
        parameter groups (its ``group_matcher`` orders the layers)."""
        return self.body.model if isinstance(self.body, FeatureGetterNet) else self.body

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Parameters above the representation (the simple feature pyramid's)."""
        return list(self.pyramid.parameters()) if self.pyramid is not None else []

    def check_size(self, image: torch.Tensor) -> None:
        """One sentence for an input size the model cannot take."""
        size = (int(image.shape[-2]), int(image.shape[-1]))
        if self.fixed_size is not None and size != self.fixed_size:
            raise BackboneError(
                f"Backbone '{self.name}' is built for {self.fixed_size[0]}x{self.fixed_size[1]} "
                f"inputs, got {size[0]}x{size[1]}; set --model.image_size {size[0]} (the data's "
                "image_size).")
        if self.plain and (size[0] % self.patch_stride or size[1] % self.patch_stride):
            raise BackboneError(
                f"Backbone '{self.name}' needs an image size that is a multiple of its patch "
                f"size {self.patch_stride}, got {size[0]}x{size[1]}; change "
                "data.init_args.image_size.")

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's own maps (``NCHW``): stage maps, or a plain ViT's token maps (one
        per distinct block read). This is the representation the tasks share."""
        self.check_size(image)
        maps = self.body(image)
        if self._keep is not None:
            maps = [maps[i] for i in self._keep]
        if self.channels_last:
            maps = [m.permute(0, 3, 1, 2) for m in maps]
        return list(maps)

    def adapt(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The encoded maps as the neck reads them: a plain ViT's through its pyramid."""
        if self.pyramid is None:
            return maps
        if len(self._blocks) == 4:  # one level per block, fine to coarse
            order = sorted(set(self._blocks))
            maps = [maps[order.index(b)] for b in self._blocks]
        return self.pyramid(maps)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps from fine to coarse, at :attr:`reductions`."""
        return self.adapt(self.encode(image))
