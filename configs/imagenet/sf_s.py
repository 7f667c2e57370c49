# SpatialFormer-S, ImageNet-1k, 300 epochs at 224 (supplementary Sec. 3).
_base_ = [
    '../_base_/datasets/imagenet.py',
    '../_base_/schedules/imagenet_300e.py',
    '../_base_/default_runtime.py',
]

model = dict(
    type='ImageClassifier',
    backbone=dict(type='SpatialFormer', arch='s', spatial_grid=(8, 8), drop_path_rate=0.2),
    head=dict(num_classes={{_base_.num_classes}}),
    mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0),
    label_smoothing=0.1,
)
default_hooks = dict(checkpoint=dict(save_best='accuracy/top1', rule='greater'))
