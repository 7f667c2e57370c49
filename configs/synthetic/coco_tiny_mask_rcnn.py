# Mask R-CNN on the tiny synthetic COCO set (tools/make_synthetic_coco.py: 4 shape classes,
# 200 train / 50 val images of at most 128 px): configs/coco/mask_rcnn_sf_s_1x.py with a tiny
# SpatialFormer (random init), anchors halved for the small images, and a CPU-minutes schedule.
# 192 images with objects (filter_empty_gt) / batch 4 = 48 iterations per epoch; 12 epochs = 576.
_base_ = ['../coco/mask_rcnn_sf_s_1x.py']

data_root = 'data/coco_synthetic/'
num_classes = 4
max_epochs = 12
tiny_backbone = dict(type='SpatialFormer', arch=dict(dims=(32, 64, 128, 160), heads=(1, 2, 4, 5), depths=(1, 1, 2, 1)),
                     spatial_grid=(4, 4), drop_path_rate=0.0)

model = dict(
    num_classes=num_classes,
    backbone=dict(_delete_=True, **tiny_backbone),
    neck=dict(out_channels=64),
    rpn=dict(anchor_sizes=((16,), (32,), (64,), (128,), (256,)), post_nms_top_n_train=300,
             pre_nms_top_n_test=300, post_nms_top_n_test=300),
    roi=dict(representation_size=256, mask_layers=(64, 64), batch_size_per_image=128),
)
train_pipeline = [
    dict(type='LoadImage'),
    dict(type='LoadCocoAnnotations', with_mask=True),
    dict(type='Resize2D', scale=[(160, 96), (160, 128)], keep_ratio=True),
    dict(type='RandomFlip2D', prob=0.5),
    dict(type='Pack2DInputs'),
]
test_pipeline = [
    dict(type='LoadImage'),
    dict(type='Resize2D', scale=(160, 128), keep_ratio=True),
    dict(type='Pack2DInputs'),
]
train_dataloader = dict(batch_size=4, dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=8, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=max_epochs, milestones=[8, 11], gamma=0.1),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=2, max_keep_ckpts=1))
