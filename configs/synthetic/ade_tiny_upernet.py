# UperNet on the tiny synthetic ADE set (tools/make_synthetic_ade.py: 9 classes, 200 train / 50
# val images about 160 px wide): configs/ade20k/upernet_sf_s_160k.py with a tiny SpatialFormer
# (random init), 128 x 128 crops, 32-channel heads and 1,000 iterations at batch 8 (40 epochs),
# validation every 250.
_base_ = ['../ade20k/upernet_sf_s_160k.py']

data_root = 'data/ade_synthetic/ADEChallengeData2016'
classes = ('sky', 'building', 'earth', 'road', 'grass', 'water', 'tree', 'car', 'person')
num_classes = len(classes)
max_iters = 1000
val_interval = 250
crop_size = (128, 128)

model = dict(
    backbone=dict(_delete_=True, type='SpatialFormer',
                  arch=dict(dims=(32, 64, 128, 160), heads=(1, 2, 4, 5), depths=(1, 1, 2, 1)),
                  spatial_grid=(4, 4), drop_path_rate=0.0),
    decode_head=dict(num_classes=num_classes, channels=32),
    auxiliary_head=dict(num_classes=num_classes, channels=16),
)
train_pipeline = [
    dict(type='LoadImage'),
    dict(type='LoadSegAnnotation'),
    dict(type='RandomResizeSeg', scale=(320, 128), ratio_range=(0.5, 2.0)),
    dict(type='RandomCropSeg', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip2D', prob=0.5),
    dict(type='PhotoMetricDistortionSeg'),
    dict(type='Pack2DInputs'),
]
test_pipeline = [
    dict(type='LoadImage'),
    dict(type='ResizeSegTest', scale=(320, 128)),
    dict(type='LoadSegAnnotation'),
    dict(type='Pack2DInputs'),
]
train_dataloader = dict(batch_size=8, num_workers=2,
                        dataset=dict(data_root=data_root, classes=classes, pipeline=train_pipeline))
val_dataloader = dict(batch_size=8, num_workers=2,
                      dataset=dict(data_root=data_root, classes=classes, pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=3e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=50, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=val_interval)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=val_interval, max_keep_ckpts=1))
