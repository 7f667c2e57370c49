"""sf3d models; importing this module registers them in ``sf3d.registry.MODELS``."""
from . import backbones, detectors, heads, layers, necks
from .backbones import ResNet, SpatialFormer
from .detectors import ImageClassifier, MultiViewDetector
from .necks import FPN

__all__ = ['backbones', 'detectors', 'heads', 'layers', 'necks', 'FPN', 'ImageClassifier', 'MultiViewDetector',
           'ResNet', 'SpatialFormer']
