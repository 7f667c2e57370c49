# SpatialFormer-S multi-view detector: the camera-conditioned spatial tokens (10 x 15 per view,
# 6 views = 900 queries, DETR3D's count) become the decoder's queries; 1600x900 input.
# Backbone from ImageNet: `python tools/train.py configs/imagenet/sf_s.py`, then copy the best
# checkpoint to `pretrained` below (its 8x8 spatial embedding is resized to 10x15 on load).
# A missing file stops training with the path and this advice; set
# `model.backbone.init_cfg=None` to train from scratch instead.
_base_ = ['../_base_/datasets/nuscenes.py', '../_base_/models/detr3d_head.py',
          '../_base_/schedules/detr3d_24e.py', '../_base_/default_runtime.py']

pretrained = 'checkpoints/sf_s_imagenet.pth'
model = dict(
    backbone=dict(type='SpatialFormer', arch='s', spatial_grid=(10, 15), out_indices=(1, 2, 3),
                  drop_path_rate=0.1, with_cp=False, init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    query_mode='spatial_tokens',
    conditioning='ray',  # none | intrinsics | extrinsics | ray | frustum (configs/nuscenes/ablations)
    depth_range=(1.0, 50.0),  # metres along the ray, cut to the ray's segment inside the point-cloud range
)
default_hooks = dict(checkpoint=dict(interval=2, max_keep_ckpts=3, save_best='NuScenes/NDS', rule='greater'))
