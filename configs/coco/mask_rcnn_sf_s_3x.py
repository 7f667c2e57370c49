# Mask R-CNN, SpatialFormer-S + FPN, 3x schedule (36 epochs, lr x0.1 after epochs 27 and 33)
# with multi-scale training: the short side drawn from [480, 800] (mmdet's 3x setting).
_base_ = ['./mask_rcnn_sf_s_1x.py']

max_epochs = 36
train_pipeline = [
    dict(type='LoadImage'),
    dict(type='LoadCocoAnnotations', with_mask=True),
    dict(type='Resize2D', scale=[(1333, 480), (1333, 800)], mode='range', keep_ratio=True),
    dict(type='RandomFlip2D', prob=0.5),
    dict(type='Pack2DInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=max_epochs, milestones=[27, 33], gamma=0.1),
]
train_cfg = dict(max_epochs=max_epochs)
