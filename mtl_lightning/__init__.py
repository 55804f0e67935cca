"""mtl_lightning: a PyTorch Lightning template for multi-task computer vision.

One :class:`~mtl_lightning.module.MultiTaskModule` wraps a timm backbone with a feature
pyramid and one head per task (classification, semantic segmentation, object detection);
LightningDataModules supply batches of the form ``{"image", "targets", "has"}``.
"""

__version__ = "0.1.0"
