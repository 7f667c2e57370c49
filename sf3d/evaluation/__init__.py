from .classification import Accuracy  # noqa: F401
from .coco_metric import CocoMetric  # noqa: F401
from .iou_metric import IoUMetric  # noqa: F401
from .nuscenes_metric import NuScenesMetric  # noqa: F401
