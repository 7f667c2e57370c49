"""Multi-view 3D detection transforms (registered in ``sf3d.registry.TRANSFORMS``) and the
``multiview_collate`` function (``sf3d.registry.FUNCTIONS``)."""
from .bev import GlobalRotScaleTrans, ObjectNameFilter, ObjectRangeFilter, RandomFlip3D
from .formatting import Pack3DDetInputs, multiview_collate
from .image import (GridMask, NormalizeMultiviewImage, PadMultiViewImage, PhotoMetricDistortionMultiView,
                    ResizeCropFlipMultiView, img_rotation)
from .loading import LoadMultiViewImages, read_rgb
from .perturb import CameraDropout, CameraHeightPitchOffset, ExtrinsicNoise, FocalScale, PrincipalPointShift

__all__ = [
    'LoadMultiViewImages', 'read_rgb', 'PhotoMetricDistortionMultiView', 'ResizeCropFlipMultiView', 'img_rotation',
    'GridMask', 'NormalizeMultiviewImage', 'PadMultiViewImage', 'GlobalRotScaleTrans', 'RandomFlip3D',
    'ObjectRangeFilter', 'ObjectNameFilter', 'Pack3DDetInputs', 'multiview_collate',
    'FocalScale', 'PrincipalPointShift', 'ExtrinsicNoise', 'CameraHeightPitchOffset', 'CameraDropout',
]
