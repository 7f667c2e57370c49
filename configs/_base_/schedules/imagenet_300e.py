# DeiT-style recipe of the SpatialFormer paper (supplementary Sec. 3): AdamW, lr 1e-3 for
# a total batch of 1024 (rescaled by `tools/train.py --auto-scale-lr` to the real batch),
# weight decay 0.05 (none on norms, biases and the spatial-token embedding),
# 10 warm-up epochs then cosine to 1e-5 over the remaining 290.
max_epochs = 300
warmup_epochs = 10

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999)),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys={'spatial_embed': dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=1e-5,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=1024, enable=False)
