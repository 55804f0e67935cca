"""Model parts: the timm backbone wrapper and the feature-pyramid neck."""

from mtl_lightning.models.backbone import Backbone
from mtl_lightning.models.neck import FeaturePyramid, Features

__all__ = ["Backbone", "FeaturePyramid", "Features"]
