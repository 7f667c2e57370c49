# A tiny SpatialFormer pretrained on synthetic ImageNet (tools/make_synthetic_imagenet.py):
# the `make demo` job until the 3D detector lands, and the model of the engine tests.
# The recipe of configs/imagenet/sf_s.py (AdamW, warm-up + cosine, label smoothing, timm's
# random-resized crop and flip) shrunk to 64x64 images and a few CPU minutes. RandAugment,
# colour jitter, random erasing and MixUp are off: the synthetic classes are shapes x colours,
# and with 1,000 images colour-changing augmentation costs more than it regularises
# (measured: 43% top-1 after 12 epochs with them, 68% after 30 epochs without).
_base_ = ['../imagenet/sf_s.py']

data_root = 'data/synthetic_imagenet'
num_classes = 10
img_size = 64
max_epochs = 30
warmup_epochs = 1
batch_size = 32  # 1000 train images / 32 = 31 iterations per epoch, 930 in all

model = dict(
    backbone=dict(_delete_=True, type='SpatialFormer',
                  arch=dict(dims=(32, 64, 128, 160), heads=(1, 2, 4, 5), depths=(1, 1, 2, 1)),
                  spatial_grid=(4, 4), drop_path_rate=0.0),
    head=dict(num_classes=num_classes),
    mixup=None,
)
train_dataloader = dict(
    batch_size=batch_size, num_workers=2,
    dataset=dict(data_root=data_root,
                 transform=dict(input_size=img_size, scale=(0.5, 1.0), auto_augment=None, color_jitter=None,
                               re_prob=0.0)))
val_dataloader = dict(
    batch_size=100, num_workers=2,
    dataset=dict(data_root=data_root, transform=dict(input_size=img_size, crop_pct=1.0)))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=1e-5, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
auto_scale_lr = dict(base_batch_size=batch_size)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(max_keep_ckpts=1))
