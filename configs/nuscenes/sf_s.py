# SpatialFormer-S multi-view detector: the camera-conditioned spatial tokens (10 x 15 per view,
# 6 views = 900 tokens) emit 8 depth hypotheses each (7200); the 900 of highest token-class score
# become the decoder's queries (DETR3D's 900); 1600x900 input. The convergence options measured on
# synthetic nuScenes (README, "Convergence") are on: dense token and pixel supervision with owner
# assignment, depth bins with in-cell offsets, query selection, denoising queries, direction bins,
# the moving flag.
# Backbone from ImageNet: `python tools/train.py configs/imagenet/sf_s.py`, then copy the best
# checkpoint to `pretrained` below (its 8x8 spatial embedding is resized to 10x15 on load).
# A missing file stops training with the path and this advice; set
# `model.backbone.init_cfg=None` to train from scratch instead.
_base_ = ['../_base_/datasets/nuscenes.py', '../_base_/models/detr3d_head.py',
          '../_base_/schedules/detr3d_24e.py', '../_base_/default_runtime.py']

pretrained = 'checkpoints/sf_s_imagenet.pth'
quality_targets = dict(thresholds=(0.5, 1.0, 2.0, 4.0), alpha=0.75, gamma=2.0)  # the metric's AP thresholds (m)
model = dict(
    backbone=dict(type='SpatialFormer', arch='s', spatial_grid=(10, 15), out_indices=(1, 2, 3),
                  drop_path_rate=0.1, with_cp=False, init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    query_mode='spatial_tokens',
    conditioning='ray',  # none | intrinsics | extrinsics | ray | frustum (configs/nuscenes/ablations)
    depth_range=(1.0, 50.0),  # metres along the ray, cut to the ray's segment inside the point-cloud range
    depth_bins=8,  # depth hypotheses per token: 6 x 10 x 15 x 8 = 7200
    token_offsets=True,  # each hypothesis on the ray through where in its cell it predicts the object centre
    num_select=900,  # the hypotheses of highest token-class score that become queries
    token_loss=dict(cls_weight=1.0, depth_weight=0.1, assign=True),
    pixel_loss=dict(cls_weight=1.0, depth_weight=0.1),
    denoising=dict(num_groups=5, centre_noise=0.5, label_noise=0.2, ray_negatives=1),
    # FCOS3D's direction bins: the yaw regressed modulo pi, a classifier per layer for front / back;
    # the moving flag: a classifier per layer for moving / static (static boxes predict velocity 0, the
    # velocity L1 sees only moving GT; sf3d/models/layers/box_flags.py); localisation-quality class targets:
    # a positive's target is the share of the metric's 0.5 / 1 / 2 / 4 m thresholds its centre is within,
    # under the varifocal loss (sf3d/models/layers/quality.py; README "Convergence", part 8)
    head=dict(direction=dict(offset=0.7854, loss_weight=0.25), moving=dict(speed=0.2, loss_weight=0.25),
              quality=quality_targets),
)
default_hooks = dict(checkpoint=dict(interval=2, max_keep_ckpts=3, save_best='NuScenes/NDS', rule='greater'))
