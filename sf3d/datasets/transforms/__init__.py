"""Data transforms (registered in ``sf3d.registry.TRANSFORMS``): multi-view 3D detection, camera
perturbations, camera-rig augmentation, 2D detection / segmentation; the ``multiview_collate`` and
``image_collate`` functions (``sf3d.registry.FUNCTIONS``)."""
from .bev import GlobalRotScaleTrans, ObjectNameFilter, ObjectRangeFilter, RandomFlip3D
from .camera_aug import CameraRigAug
from .formatting import Pack3DDetInputs, multiview_collate
from .formatting2d import image_collate
from .image import (GridMask, NormalizeMultiviewImage, PadMultiViewImage, PhotoMetricDistortionMultiView,
                    ResizeCropFlipMultiView, img_rotation)
from .loading import LoadMultiViewImages, read_rgb
from .perturb import CameraDropout, CameraHeightPitchOffset, ExtrinsicNoise, FocalScale, PrincipalPointShift
from .seg_transforms import (LoadSegAnnotation, PhotoMetricDistortionSeg, RandomCropSeg, RandomResizeSeg,
                             ResizeSegTest)
from .transforms2d import LoadCocoAnnotations, LoadImage, Pack2DInputs, RandomFlip2D, Resize2D

__all__ = [
    'LoadMultiViewImages', 'read_rgb', 'PhotoMetricDistortionMultiView', 'ResizeCropFlipMultiView', 'img_rotation',
    'GridMask', 'NormalizeMultiviewImage', 'PadMultiViewImage', 'GlobalRotScaleTrans', 'RandomFlip3D',
    'ObjectRangeFilter', 'ObjectNameFilter', 'Pack3DDetInputs', 'multiview_collate',
    'FocalScale', 'PrincipalPointShift', 'ExtrinsicNoise', 'CameraHeightPitchOffset', 'CameraDropout',
    'CameraRigAug',
    'image_collate', 'LoadImage', 'LoadCocoAnnotations', 'Resize2D', 'RandomFlip2D', 'Pack2DInputs',
    'LoadSegAnnotation', 'RandomResizeSeg', 'RandomCropSeg', 'ResizeSegTest', 'PhotoMetricDistortionSeg',
]
