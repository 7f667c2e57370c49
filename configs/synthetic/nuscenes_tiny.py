# The `make demo` detector: configs/nuscenes/sf_s.py shrunk to the synthetic nuScenes mini
# (tools/make_synthetic_nuscenes.py, 400x225 images) and a few CPU minutes on 2 cores.
_base_ = ['../nuscenes/sf_s.py']

data_root = 'data/nuscenes_synthetic/'
version = 'v1.0-mini'
final_size = (224, 416)  # (H, W): the 400x225 images resized by 1.04, 10 rows cropped off the top
max_epochs = 8
batch_size = 2

model = dict(
    data_preprocessor=dict(photometric=None, grid_mask=None),
    backbone=dict(_delete_=True, type='SpatialFormer',
                  arch=dict(dims=(32, 64, 128, 160), heads=(1, 2, 4, 5), depths=(1, 1, 2, 1)),
                  spatial_grid=(6, 10), out_indices=(1, 2, 3), drop_path_rate=0.0),
    neck=dict(num_outs=3, add_extra_convs=False),  # C3-C5 without an extra level: strides 8, 16, 32
    head=dict(num_layers=3, num_heads=4, ffn_dims=256, dropout=0.0),  # with sf_s.py's quality targets
    embed_dims=128,
    num_select=6 * 6 * 10,  # of the 6 x 6 x 10 x 8 = 2880 token hypotheses, the 360 best become queries
)  # sf_s.py's other options stay on: token + pixel supervision, 8 depth bins with in-cell offsets, denoising,
# direction bins, the moving flag

train_pipeline = [
    dict(type='LoadMultiViewImages'),
    dict(type='ResizeCropFlipMultiView', final_size=final_size, is_train=False),
    dict(type='ObjectRangeFilter', point_cloud_range={{_base_.point_cloud_range}}),
    dict(type='ObjectNameFilter', classes={{_base_.class_names}}),
    dict(type='Pack3DDetInputs', keys=('img', 'gt_bboxes_3d', 'gt_labels_3d')),
]
test_pipeline = [
    dict(type='LoadMultiViewImages'),
    dict(type='ResizeCropFlipMultiView', final_size=final_size, is_train=False),
    dict(type='Pack3DDetInputs', keys=('img', )),
]
train_dataloader = dict(batch_size=batch_size, num_workers=2,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=2, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(data_root=data_root, version=version)
test_evaluator = val_evaluator

# lr 3e-3 (1e-3 before): with direction bins +0.036 NDS at this short schedule, 3 seeds (README, "Convergence").
# The backbone, trained from scratch here, at half that step and the gradient clipped at 10 (DETR3D: 35): at the
# full step the quality targets diverged in 2 of 7 runs and keypoints in 1 of 3 (README, "Convergence", part 10)
optim_wrapper = dict(optimizer=dict(lr=3e-3), paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.5)}),
                     clip_grad=dict(max_norm=10))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=1e-2, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=4)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=4, max_keep_ckpts=1))
