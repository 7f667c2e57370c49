# SpatialFormer-B variant of sf_s.py; 18 stage-3 blocks of global attention at 1600x928 need
# gradient checkpointing to train at batch 1 per GPU (tools/analysis/benchmark.py --detector).
_base_ = ['./sf_s.py']

pretrained = 'checkpoints/sf_b_imagenet.pth'
model = dict(backbone=dict(arch='b', with_cp=True, drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)))
