# Dense pretraining of sf_s.py on the nuScenes camera images (DETR3D starts from FCOS3D, a
# monocular detector trained on them; sf3d/models/detectors/dense_pretrainer.py): the ImageNet
# backbone, the FPN, the camera conditioning and the dense token and pixel heads learn the token
# and pixel supervision, no decoder. Then copy the last checkpoint to sf_s.py's `pretrained`:
#   python tools/train.py configs/nuscenes/sf_s_dense.py --work-dir work_dirs/sf_s_dense
#   cp work_dirs/sf_s_dense/epoch_12.pth checkpoints/sf_s_nuscenes_dense.pth
# 12 epochs (FCOS3D's 1x) x 3,517 iterations at a total batch of 8 = 42,204 iterations of the
# backbone and the dense heads only; no validation (it predicts no boxes).
_base_ = ['./sf_s.py']

max_epochs = 12
model = dict(type='DensePretrainer', pretrained=None)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)  # the decoder never runs

param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=500),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=1e-3, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs + 1)
val_dataloader = None
val_cfg = None
val_evaluator = None
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=2, save_best=None))
