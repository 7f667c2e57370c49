# Dense pretraining of the demo detector (nuscenes_tiny.py) on the same camera images, DETR3D's
# FCOS3D step in small (sf3d/models/detectors/dense_pretrainer.py): the backbone, FPN, camera
# conditioning and the dense token and pixel heads learn the token and pixel supervision, no decoder.
# Its last checkpoint is what ablations/pretrained.py and queries_learned_pretrained.py load (they say how
# to copy it there); `make demo` does not pretrain.
# 4 epochs x 80 iterations (160 samples, batch 2) = 320 iterations, no validation (no boxes to score).
_base_ = ['./nuscenes_tiny.py']

max_epochs = 4
model = dict(type='DensePretrainer', pretrained=None)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)  # the decoder never runs

param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=1e-2, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs + 1)
val_dataloader = None
val_cfg = None
val_evaluator = None
default_hooks = dict(checkpoint=dict(interval=max_epochs, max_keep_ckpts=1, save_best=None))
