# The mask-transformer head on the tiny synthetic ADE set, queries from the spatial tokens: the
# 4 x 4 tokens replicated to 64 candidates, the top 25 selected (the paper's 64 -> 256 -> 100 in
# proportion), 3 decoder layers, 32 channels. Data and schedule as ade_tiny_upernet.py.
_base_ = ['../ade20k/maskformer_sf_s_160k.py']

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
    decode_head=dict(num_classes=num_classes, num_candidates=64, num_queries=25, embed_dims=32, mask_dims=32,
                     num_heads=2, ffn_dims=64, num_layers=3, num_points=1024),
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

optim_wrapper = dict(optimizer=dict(lr=1e-3), clip_grad=dict(max_norm=1.0),
                     paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=1.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False, begin=50, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=val_interval)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=val_interval, max_keep_ckpts=1))
