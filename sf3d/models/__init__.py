"""sf3d models; importing this module registers them in ``sf3d.registry.MODELS``."""
from . import backbones, data_preprocessors, detectors, heads, layers, necks, segmentors
from .backbones import ResNet, SpatialFormer
from .data_preprocessors import ImageDataPreprocessor, MultiViewDataPreprocessor
from .detectors import DETR2D, ImageClassifier, MultiViewDetector, TVMaskRCNN
from .necks import FPN
from .segmentors import EncoderDecoder2D

__all__ = ['backbones', 'data_preprocessors', 'detectors', 'heads', 'layers', 'necks', 'segmentors', 'DETR2D',
           'EncoderDecoder2D', 'FPN', 'ImageClassifier', 'ImageDataPreprocessor', 'MultiViewDataPreprocessor',
           'MultiViewDetector', 'ResNet', 'SpatialFormer', 'TVMaskRCNN']
