# 160k iterations at a total batch of 16 (mmseg's ADE20K schedule; the SpatialFormer paper's
# length): AdamW, lr 6e-5, weight decay 0.01 (none on norms, biases, the spatial-token
# embedding), 1500-iteration linear warm-up, then poly decay (power 1) to 0.
# Validation and checkpoints every 16k iterations (10 in all). Iteration-based, so this file also
# sets the runtime's hooks and log processor to count iterations (it includes default_runtime.py).
_base_ = ['../default_runtime.py']

max_iters = 160000
val_interval = 16000

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, weight_decay=0.01, betas=(0.9, 0.999)),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys={'spatial_embed': dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=val_interval)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(
    logger=dict(interval=50, log_metric_by_epoch=False),  # validation scalars at step = iteration
    checkpoint=dict(by_epoch=False, interval=val_interval, max_keep_ckpts=2, save_best='seg/mIoU', rule='greater'),
)
log_processor = dict(by_epoch=False)
auto_scale_lr = dict(base_batch_size=16, enable=False)
