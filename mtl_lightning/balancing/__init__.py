"""How task losses become one update: loss weighting and gradient weighting.

Pick one in YAML as ``model.balancer`` (see ``configs/balancer/``). torchjd supplies the math
of the aggregators and scalarizers; this package makes them exact inside Lightning (DDP,
mixed precision, gradient accumulation and clipping, partial labels, checkpoints).
"""

from mtl_lightning.balancing.aggregators import (
    CRMOGM,
    IMTLG,
    MGDA,
    PCD,
    AlignedMTL,
    CAGrad,
    DualProj,
    ExcessMTL,
    FairGrad,
    GradVac,
    NashMTL,
    PCGrad,
    SDMGrad,
    UPGrad,
)
from mtl_lightning.balancing.base import Balancer, TaskLosses
from mtl_lightning.balancing.conflict_free import ConFIG, GradDrop
from mtl_lightning.balancing.dual_balancing import DBMTL
from mtl_lightning.balancing.dwa import DynamicWeightAverage
from mtl_lightning.balancing.famo import FastAdaptiveMultitask
from mtl_lightning.balancing.geometric import GeometricLossStrategy
from mtl_lightning.balancing.gradient_weighting import GradientWeighting, TorchjdWeighting
from mtl_lightning.balancing.gradnorm import GradNorm
from mtl_lightning.balancing.impartial import ImpartialLossWeighting
from mtl_lightning.balancing.jacobian_aggregation import JacobianAggregation
from mtl_lightning.balancing.loss_weighting import Combination, LossWeighting
from mtl_lightning.balancing.moco import MoCo
from mtl_lightning.balancing.random_weighting import RandomLossWeighting
from mtl_lightning.balancing.record import BalancingRecord, GradientStatistics
from mtl_lightning.balancing.smooth_tchebycheff import SmoothTchebycheff
from mtl_lightning.balancing.static import StaticWeighting
from mtl_lightning.balancing.uncertainty import UncertaintyWeighting

__all__ = [
    "CRMOGM", "DBMTL", "IMTLG", "MGDA", "PCD", "AlignedMTL", "Balancer", "BalancingRecord",
    "CAGrad", "Combination", "ConFIG",
    "DualProj", "DynamicWeightAverage", "ExcessMTL", "FairGrad", "FastAdaptiveMultitask",
    "GeometricLossStrategy", "GradDrop", "GradNorm", "GradVac", "GradientStatistics",
    "GradientWeighting",
    "ImpartialLossWeighting", "JacobianAggregation", "LossWeighting", "MoCo", "NashMTL", "PCGrad",
    "RandomLossWeighting", "SDMGrad", "SmoothTchebycheff", "StaticWeighting", "TaskLosses",
    "TorchjdWeighting", "UPGrad", "UncertaintyWeighting",
]
