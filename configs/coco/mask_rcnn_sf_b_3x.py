# Mask R-CNN, SpatialFormer-B + FPN, 3x schedule with multi-scale training (see mask_rcnn_sf_s_3x.py).
_base_ = ['./mask_rcnn_sf_s_3x.py']

model = dict(backbone=dict(arch='b', drop_path_rate=0.2,
                           init_cfg=dict(checkpoint='checkpoints/sf_b_imagenet.pth')))
