"""Model-side data preprocessors (registered in ``sf3d.registry.MODELS``)."""
from .image import ImageDataPreprocessor
from .multiview import BatchGridMask, BatchPhotometricDistortion, MultiViewDataPreprocessor

__all__ = ['BatchGridMask', 'BatchPhotometricDistortion', 'ImageDataPreprocessor', 'MultiViewDataPreprocessor']
