# Mask R-CNN, SpatialFormer-B + FPN, 1x schedule (see mask_rcnn_sf_s_1x.py).
_base_ = ['./mask_rcnn_sf_s_1x.py']

model = dict(backbone=dict(arch='b', drop_path_rate=0.2,
                           init_cfg=dict(checkpoint='checkpoints/sf_b_imagenet.pth')))
