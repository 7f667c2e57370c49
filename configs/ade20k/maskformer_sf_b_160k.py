# Mask-transformer head on SpatialFormer-B, ADE20K, 160k iterations (see maskformer_sf_s_160k.py).
_base_ = ['./maskformer_sf_s_160k.py']

model = dict(backbone=dict(arch='b', drop_path_rate=0.4,
                           init_cfg=dict(checkpoint='checkpoints/sf_b_imagenet.pth')))
