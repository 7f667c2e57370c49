# DETR3D's schedule (DESIGN.md): AdamW lr 2e-4, weight decay 0.01, backbone lr x0.1, gradient
# clipping at 35, 24 epochs; 500-iteration linear warm-up from lr/3, then cosine to lr * 1e-3.
# nuScenes train has 28,130 samples: at a total batch of 8 (8 GPUs x 1) that is 3,517
# iterations per epoch and 84,408 in all. Validation every 2 epochs (the variants keep the best
# checkpoint by NuScenes/NDS: default_hooks lives in default_runtime.py).
max_epochs = 24
lr = 2e-4
warmup_iters = 500

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=lr, weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}),
    clip_grad=dict(max_norm=35, norm_type=2),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=1e-3, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=2)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=8, enable=False)  # 8 GPUs x 1 sample
