# Mask R-CNN, SpatialFormer-S + FPN, 1x schedule (12 epochs), COCO 2017 (supplementary Sec. 3).
# torchvision's RPN and RoI heads on sf3d's backbone / FPN / data path (TVMaskRCNN; its docstring
# lists what differs from mmdet's Mask R-CNN). Backbone from the ImageNet checkpoint.
_base_ = [
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/coco_1x.py',
    '../_base_/default_runtime.py',
]

model = dict(
    type='TVMaskRCNN',
    num_classes={{_base_.num_classes}},
    data_preprocessor=dict(type='ImageDataPreprocessor'),
    backbone=dict(type='SpatialFormer', arch='s', spatial_grid=(8, 8), drop_path_rate=0.1,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/sf_s_imagenet.pth')),
    neck=dict(out_channels=256, num_outs=5),  # P2-P5 + max-pooled P6
    # rpn / roi: mmdet's Mask R-CNN settings are TVMaskRCNN's defaults
)
default_hooks = dict(checkpoint=dict(save_best='coco/bbox_mAP', rule='greater'))
