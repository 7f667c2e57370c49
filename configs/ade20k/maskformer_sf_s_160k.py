# Mask-transformer head on SpatialFormer-S, ADE20K, 160k iterations (supplementary Sec. 3): the
# backbone's 8 x 8 final spatial tokens are replicated to 256 candidates, the 100 with the highest
# class score become the object queries of 9 masked-attention decoder layers (Mask2Former-style,
# light FPN pixel decoder); set-prediction loss: class CE 2.0 (no-object 0.1), mask BCE 5.0, dice
# 5.0 on 112 x 112 = 12544 importance-sampled points. Mask2Former's optimiser: AdamW 1e-4,
# weight decay 0.05, backbone lr x0.1, gradient clip 0.01, poly 0.9.
_base_ = [
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/ade20k_160k.py',  # includes default_runtime.py
]

model = dict(
    type='EncoderDecoder2D',
    data_preprocessor=dict(type='ImageDataPreprocessor'),
    backbone=dict(type='SpatialFormer', arch='s', spatial_grid=(8, 8), drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/sf_s_imagenet.pth')),
    decode_head=dict(type='MaskTransformerHead', num_classes={{_base_.num_classes}}, query_mode='spatial_tokens',
                     num_candidates=256, num_queries=100, embed_dims=256, mask_dims=256, num_heads=8,
                     ffn_dims=2048, num_layers=9, num_points=12544),
    test_cfg=dict(mode='whole'),
)
optim_wrapper = dict(
    optimizer=dict(lr=1e-4, weight_decay=0.05),
    clip_grad=dict(max_norm=0.01, norm_type=2),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1), 'spatial_embed': dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False, begin=1500, end={{_base_.max_iters}}),
]
