"""Geometry structures: LiDAR-frame boxes and the per-sample camera parameters (one convention each)."""
from .boxes import LiDARBoxes, from_info_bbox3d, from_nusc_boxes, to_gravity_array, to_nusc_boxes
from .cameras import MultiViewCameras, lidar2cam_from_poses
from .transforms import (bev_flip, bev_rotation, bev_scaling, bev_translation, img_crop, img_hflip, img_resize,
                         pose_matrix)

__all__ = [
    'LiDARBoxes', 'to_nusc_boxes', 'from_nusc_boxes', 'from_info_bbox3d', 'to_gravity_array',
    'MultiViewCameras', 'lidar2cam_from_poses', 'pose_matrix',
    'bev_rotation', 'bev_scaling', 'bev_translation', 'bev_flip', 'img_resize', 'img_crop', 'img_hflip',
]
