# COCO 2017 instance segmentation: data/coco/{train2017,val2017}/*.jpg and
# data/coco/annotations/instances_{train,val}2017.json (see data/README.md). Boxes and masks are
# scored by pycocotools (CocoMetric), gathered across ranks. Labels 0..79 follow ascending
# category id. mmdet's single-scale recipe: resize to 1333 x 800 (keep ratio), flip 0.5.
dataset_type = 'CocoDetection'
data_root = 'data/coco/'
num_classes = 80
img_scale = (1333, 800)  # (w, h), keep ratio: the long side <= 1333, the short side <= 800

train_pipeline = [
    dict(type='LoadImage'),
    dict(type='LoadCocoAnnotations', with_mask=True),
    dict(type='Resize2D', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip2D', prob=0.5),
    dict(type='Pack2DInputs'),
]
test_pipeline = [
    dict(type='LoadImage'),
    dict(type='Resize2D', scale=img_scale, keep_ratio=True),
    dict(type='Pack2DInputs'),
]
train_dataloader = dict(
    batch_size=2,  # per GPU; 8 GPUs x 2 = 16, the batch the lr is quoted for
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    worker_init_fn=dict(type='sf3d.seed_worker'),
    collate_fn=dict(type='sf3d.image_collate', size_divisor=32),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/instances_train2017.json',
                 data_prefix=dict(img='train2017/'), with_mask=True, filter_empty_gt=True,
                 pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='sf3d.image_collate', size_divisor=32),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/instances_val2017.json',
                 data_prefix=dict(img='val2017/'), test_mode=True, pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val2017.json',
                     metric=['bbox', 'segm'])
test_evaluator = val_evaluator
