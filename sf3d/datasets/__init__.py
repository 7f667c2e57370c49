from . import nuscenes_info, transforms  # noqa: F401  (transforms registers the pipeline steps)
from .ade import ADE20KDataset  # noqa: F401
from .coco import CocoDetection  # noqa: F401
from .imagenet import ImageNetFolder  # noqa: F401
from .nuscenes_dataset import PREV_SUFFIX, NuScenesMultiViewDataset, prev_view_name  # noqa: F401
