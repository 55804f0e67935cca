"""Callbacks: the metrics report (console table + metrics.json), prediction overlays of
validation images (PNG + W&B images and table), the gradient-conflict heatmap, the
classification confusion matrix, the W&B run summaries, the prediction writer, the run's
cost (run.json), staged training and the frozen garbage collector."""

from mtl_lightning.callbacks.confusion_matrix import ConfusionMatrix
from mtl_lightning.callbacks.garbage_collection import FrozenGarbageCollector
from mtl_lightning.callbacks.gradient_conflict import GradientConflictHeatmap
from mtl_lightning.callbacks.metrics_report import MetricsReport
from mtl_lightning.callbacks.prediction_overlays import PredictionOverlays
from mtl_lightning.callbacks.prediction_writer import PredictionWriter
from mtl_lightning.callbacks.run_statistics import RunStatistics
from mtl_lightning.callbacks.staged_training import StagedTraining
from mtl_lightning.callbacks.wandb_summaries import WandbSummaries

__all__ = [
    "ConfusionMatrix",
    "FrozenGarbageCollector",
    "GradientConflictHeatmap",
    "MetricsReport",
    "PredictionOverlays",
    "PredictionWriter",
    "RunStatistics",
    "StagedTraining",
    "WandbSummaries",
]
