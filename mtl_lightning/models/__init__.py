"""Model parts: the timm backbone wrapper, the feature-pyramid neck, and the architectures
that decide how tasks share them (``models/architectures/``)."""

from mtl_lightning.models.backbone import Backbone, BackboneError
from mtl_lightning.models.neck import FeaturePyramid, Features

__all__ = ["Backbone", "BackboneError", "FeaturePyramid", "Features"]
