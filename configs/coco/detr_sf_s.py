# DETR-style set-prediction detector (DETR2D) on SpatialFormer-S: the backbone's 10 x 10 = 100
# final spatial tokens are the initial object queries (content from the token, reference box from
# its grid cell); 6 decoder layers with box refinement, Hungarian matching (focal 2, L1 5, GIoU 2).
# The paper gives no DETR schedule: Deformable-DETR's is used (AdamW 2e-4, backbone lr x0.1,
# weight decay 1e-4, gradient clip 0.1, 50 epochs, lr x0.1 after epoch 40, total batch 16).
# The 8 x 8 ImageNet spatial-token embedding is resized to 10 x 10 when it loads.
_base_ = [
    '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime.py',
]

max_epochs = 50
model = dict(
    type='DETR2D',
    data_preprocessor=dict(type='ImageDataPreprocessor'),
    backbone=dict(type='SpatialFormer', arch='s', spatial_grid=(10, 10), drop_path_rate=0.2,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/sf_s_imagenet.pth')),
    head=dict(num_classes={{_base_.num_classes}}, num_decoder_layers=6, num_heads=8, ffn_dims=2048, dropout=0.1),
    embed_dims=256,
    query_mode='spatial_tokens',
)
# boxes only
train_pipeline = [
    dict(type='LoadImage'),
    dict(type='LoadCocoAnnotations', with_mask=False),
    dict(type='Resize2D', scale=[(1333, 480), (1333, 800)], mode='range', keep_ratio=True),
    dict(type='RandomFlip2D', prob=0.5),
    dict(type='Pack2DInputs'),
]
train_dataloader = dict(dataset=dict(with_mask=False, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(with_mask=False))
test_dataloader = val_dataloader
val_evaluator = dict(metric='bbox')
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1), 'spatial_embed': dict(decay_mult=0.0)}),
)
param_scheduler = [dict(type='MultiStepLR', by_epoch=True, begin=0, end=max_epochs, milestones=[40], gamma=0.1)]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=5)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=16, enable=False)
default_hooks = dict(checkpoint=dict(interval=5, save_best='coco/bbox_mAP', rule='greater'))
