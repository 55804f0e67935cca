"""Model parts: the timm backbone adapter (with a simple feature pyramid for plain ViTs), the
input normalisation, the feature-pyramid neck, and the architectures that decide how tasks
share them (``models/architectures/``)."""

from mtl_lightning.models.backbone import Backbone, BackboneError
from mtl_lightning.models.input_normalization import InputNormalization
from mtl_lightning.models.neck import FeaturePyramid, Features
from mtl_lightning.models.simple_feature_pyramid import SimpleFeaturePyramid

__all__ = ["Backbone", "BackboneError", "FeaturePyramid", "Features", "InputNormalization",
           "SimpleFeaturePyramid"]
