# nuScenes, the six cameras at full resolution (1600x900, padded to 1600x928), DETR3D's data
# recipe: GT boxes inside the point-cloud range and of the ten detection classes; photometric
# distortion, normalisation and GridMask run batched on the device in the model's
# MultiViewDataPreprocessor (configs/_base_/models/*.py), so the pipeline stays uint8.
# Info files: `python tools/create_data.py nuscenes --root-path data/nuscenes --version v1.0-trainval`.
dataset_type = 'NuScenesMultiViewDataset'
data_root = 'data/nuscenes/'
version = 'v1.0-trainval'
class_names = ['car', 'truck', 'trailer', 'bus', 'construction_vehicle', 'bicycle', 'motorcycle',
               'pedestrian', 'traffic_cone', 'barrier']
point_cloud_range = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
input_modality = dict(use_camera=True, use_lidar=False)
size_divisor = 32

train_pipeline = [
    dict(type='LoadMultiViewImages'),
    dict(type='ObjectRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='ObjectNameFilter', classes=class_names),
    dict(type='PadMultiViewImage', size_divisor=size_divisor),
    dict(type='Pack3DDetInputs', keys=('img', 'gt_bboxes_3d', 'gt_labels_3d')),
]
test_pipeline = [
    dict(type='LoadMultiViewImages'),
    dict(type='PadMultiViewImage', size_divisor=size_divisor),
    dict(type='Pack3DDetInputs', keys=('img', )),
]

train_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    # fresh workers each epoch, seeded from the epoch's stream (sf3d/engine/seeding.py)
    worker_init_fn=dict(type='sf3d.seed_worker'),
    collate_fn=dict(type='sf3d.multiview_collate'),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='nuscenes_infos_train.pkl',
                 class_names=class_names, modality=input_modality, pipeline=train_pipeline,
                 use_valid_flag=True, test_mode=False))
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='sf3d.multiview_collate'),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='nuscenes_infos_val.pkl',
                 class_names=class_names, modality=input_modality, pipeline=test_pipeline,
                 test_mode=True))
test_dataloader = val_dataloader

val_evaluator = dict(type='NuScenesMetric', data_root=data_root, ann_file='nuscenes_infos_val.pkl',
                     version=version, modality=input_modality, class_names=class_names)
test_evaluator = val_evaluator
