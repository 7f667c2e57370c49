# The documented longer synthetic run (README, "Convergence"): nuscenes_tiny.py on a larger
# synthetic mini (40 samples per scene: 320 train / 80 mini_val samples) for 60 CPU-minutes on
# one core (`OMP_NUM_THREADS=1`, so that the learned-query baseline can run beside it):
# 16 epochs x 160 iterations of batch 2 = 2,560 iterations, NDS on mini_val every 2 epochs.
#   python tools/make_synthetic_nuscenes.py --out data/nuscenes_synthetic_40 --samples-per-scene 40
#   python tools/create_data.py nuscenes --root-path data/nuscenes_synthetic_40 --version v1.0-mini
_base_ = ['./nuscenes_tiny.py']

data_root = 'data/nuscenes_synthetic_40/'
max_epochs = 16

train_dataloader = dict(num_workers=1, dataset=dict(data_root=data_root))
val_dataloader = dict(num_workers=1, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(data_root=data_root)
test_evaluator = val_evaluator

# lr 1e-3, not the demo's 3e-3: on this 16-epoch schedule the token model at 3e-3 diverged in its
# third epoch (loss 13.0 -> 19.3, the pixel loss 0.20 -> 0.69; NDS 0.126 at epoch 2, 0.089 at epoch 4;
# README, "Convergence"). The demo's 8-epoch cosine leaves the large step sooner. 1e-3 is part 4's.
# The backbone at the head's step and DETR3D's clipping at 35, as measured (the demo halves the one and clips
# at 10 since part 10). With sf_s.py's quality targets: best NDS 0.262 against 0.247 without (part 8).
optim_wrapper = dict(optimizer=dict(lr=1e-3), paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=1.0)}),
                     clip_grad=dict(max_norm=35))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=1e-2, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
default_hooks = dict(checkpoint=dict(interval=2, max_keep_ckpts=1))
