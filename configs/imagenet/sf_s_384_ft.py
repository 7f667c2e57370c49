# Fine-tune SpatialFormer-S at 384: 30 epochs, lr 5e-6, wd 1e-8, batch 512 (8 GPUs x 64),
# from the 224 checkpoint. The spatial-token grid does not depend on the image size, so
# nothing is interpolated: the 224 weights load as they are.
_base_ = './sf_s.py'

img_size = 384
max_epochs = 30
# The 224 run's best checkpoint (work_dirs/sf_s/best_accuracy_top1_epoch_*.pth): link it
# here or pass --cfg-options load_from=PATH. A missing file stops the run and names it.
load_from = 'checkpoints/sf_s_in1k_224.pth'

train_dataloader = dict(batch_size=64, dataset=dict(transform=dict(input_size=img_size)))
val_dataloader = dict(batch_size=64, dataset=dict(transform=dict(input_size=img_size, crop_pct=1.0)))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=5e-6, weight_decay=1e-8))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-7, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=512)
