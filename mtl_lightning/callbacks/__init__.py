"""Callbacks: the metrics report (console table + metrics.json), prediction overlays of
validation images (PNG + W&B), the gradient-conflict heatmap and the prediction writer."""

from mtl_lightning.callbacks.gradient_conflict import GradientConflictHeatmap
from mtl_lightning.callbacks.metrics_report import MetricsReport
from mtl_lightning.callbacks.prediction_overlays import PredictionOverlays
from mtl_lightning.callbacks.prediction_writer import PredictionWriter

__all__ = ["GradientConflictHeatmap", "MetricsReport", "PredictionOverlays", "PredictionWriter"]
