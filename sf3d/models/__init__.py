"""sf3d models; importing this module registers them in ``sf3d.registry.MODELS``."""
from . import backbones, detectors, heads, layers
from .backbones import SpatialFormer
from .detectors import ImageClassifier

__all__ = ['backbones', 'detectors', 'heads', 'layers', 'ImageClassifier', 'SpatialFormer']
