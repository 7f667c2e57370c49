# ADE20K (SceneParsing, 150 classes): data/ade/ADEChallengeData2016/{images,annotations}/
# {training,validation} (see data/README.md). mmseg's recipe: random resize of (2048, 512) by
# 0.5-2.0, 512 x 512 crops with at most 75 % of one class, flip, photometric distortion; test at
# (2048, 512) keep ratio, scored at the original resolution (IoUMetric: mIoU, mAcc, aAcc and a
# per-class table). File label 0 ("other") is ignored (reduce_zero_label).
dataset_type = 'ADE20KDataset'
data_root = 'data/ade/ADEChallengeData2016'
num_classes = 150
crop_size = (512, 512)
img_scale = (2048, 512)

train_pipeline = [
    dict(type='LoadImage'),
    dict(type='LoadSegAnnotation'),
    dict(type='RandomResizeSeg', scale=img_scale, ratio_range=(0.5, 2.0)),
    dict(type='RandomCropSeg', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip2D', prob=0.5),
    dict(type='PhotoMetricDistortionSeg'),
    dict(type='Pack2DInputs'),
]
test_pipeline = [
    dict(type='LoadImage'),
    dict(type='ResizeSegTest', scale=img_scale),
    dict(type='LoadSegAnnotation'),  # after the resize: the map stays at the original size
    dict(type='Pack2DInputs'),
]
train_dataloader = dict(
    batch_size=2,  # per GPU; 8 GPUs x 2 = 16
    num_workers=4,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    worker_init_fn=dict(type='sf3d.seed_worker'),
    collate_fn=dict(type='sf3d.image_collate', size_divisor=32),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
                 pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='sf3d.image_collate', size_divisor=32, pad_seg_map=False),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
                 pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric')
test_evaluator = val_evaluator
