# ImageNet-1k in the standard folder layout: data/imagenet/{train,val}/<wnid>/*.JPEG
# (see data/README.md). Augmentation is timm's: RandAugment, random erasing, bicubic.
dataset_type = 'ImageNetFolder'
data_root = 'data/imagenet'
num_classes = 1000
img_size = 224

train_transform = dict(
    input_size=img_size, is_training=True, auto_augment='rand-m9-mstd0.5-inc1',
    re_prob=0.25, re_mode='pixel', re_count=1, interpolation='bicubic', color_jitter=0.4)
val_transform = dict(input_size=img_size, crop_pct=0.875, interpolation='bicubic')

train_dataloader = dict(
    batch_size=128,  # per GPU; 8 GPUs x 128 = 1024, the batch the lr is quoted for
    num_workers=8,
    # Fresh workers each epoch, seeded from the epoch's stream (sf3d.seed_worker): the
    # augmentation of a resumed run equals that of an uninterrupted one.
    persistent_workers=False,
    drop_last=True,  # MixUp/CutMix pair samples, so batches must stay even
    sampler=dict(type='DefaultSampler', shuffle=True),
    worker_init_fn=dict(type='sf3d.seed_worker'),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type=dataset_type, data_root=data_root, split='train', transform=train_transform),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=8,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type=dataset_type, data_root=data_root, split='val', transform=val_transform),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
