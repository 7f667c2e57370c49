from .classification import Accuracy  # noqa: F401
from .nuscenes_metric import NuScenesMetric  # noqa: F401
