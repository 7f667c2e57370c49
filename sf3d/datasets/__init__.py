from . import nuscenes_info, transforms  # noqa: F401  (transforms registers the pipeline steps)
from .imagenet import ImageNetFolder  # noqa: F401
from .nuscenes_dataset import NuScenesMultiViewDataset  # noqa: F401
