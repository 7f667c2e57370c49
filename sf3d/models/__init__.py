"""sf3d models; importing this module registers them in ``sf3d.registry.MODELS``."""
from . import backbones, data_preprocessors, detectors, heads, layers, necks
from .backbones import ResNet, SpatialFormer
from .data_preprocessors import MultiViewDataPreprocessor
from .detectors import ImageClassifier, MultiViewDetector
from .necks import FPN

__all__ = ['backbones', 'data_preprocessors', 'detectors', 'heads', 'layers', 'necks', 'FPN', 'ImageClassifier',
           'MultiViewDataPreprocessor', 'MultiViewDetector', 'ResNet', 'SpatialFormer']
