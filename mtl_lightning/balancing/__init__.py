"""How task losses become one update. This package holds the seam; static weights for now."""

from mtl_lightning.balancing.base import Balancer
from mtl_lightning.balancing.static import StaticWeighting

__all__ = ["Balancer", "StaticWeighting"]
