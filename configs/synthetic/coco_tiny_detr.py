# The DETR-style detector on the tiny synthetic COCO set, the 4 x 4 = 16 final spatial tokens as
# queries (configs/coco/detr_sf_s.py shrunk: tiny SpatialFormer, 3 decoder layers, 64 channels).
# 200 images / batch 4 = 50 iterations per epoch; 24 epochs = 1200 iterations, validation every 2.
_base_ = ['../coco/detr_sf_s.py']

data_root = 'data/coco_synthetic/'
max_epochs = 24

model = dict(
    backbone=dict(_delete_=True, type='SpatialFormer',
                  arch=dict(dims=(32, 64, 128, 160), heads=(1, 2, 4, 5), depths=(1, 1, 2, 1)),
                  spatial_grid=(4, 4), drop_path_rate=0.0),
    head=dict(num_classes=4, num_decoder_layers=3, num_heads=4, ffn_dims=256, dropout=0.0),
    embed_dims=64,
)
train_pipeline = [
    dict(type='LoadImage'),
    dict(type='LoadCocoAnnotations', with_mask=False),
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

optim_wrapper = dict(optimizer=dict(lr=1e-3), clip_grad=dict(max_norm=1.0),
                     paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=1.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=max_epochs, milestones=[20], gamma=0.1),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=2, max_keep_ckpts=1))
