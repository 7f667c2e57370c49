# SpatialFormer-T variant of sf_s.py (same detector, recipe and queries).
_base_ = ['./sf_s.py']

pretrained = 'checkpoints/sf_t_imagenet.pth'
model = dict(backbone=dict(arch='t', init_cfg=dict(checkpoint=pretrained)))
