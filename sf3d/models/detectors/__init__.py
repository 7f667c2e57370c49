from .classifier import ImageClassifier
from .dense_pretrainer import DensePretrainer
from .detr2d import DETR2D
from .mask_rcnn import TVMaskRCNN
from .multiview_detector import MultiViewDetector

__all__ = ['DETR2D', 'DensePretrainer', 'ImageClassifier', 'MultiViewDetector', 'TVMaskRCNN']
