from .classifier import ImageClassifier
from .multiview_detector import MultiViewDetector

__all__ = ['ImageClassifier', 'MultiViewDetector']
