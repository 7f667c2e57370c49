# Fine-tune SpatialFormer-B at 384 (same recipe as sf_s_384_ft.py).
_base_ = './sf_s_384_ft.py'
model = dict(backbone=dict(arch='b', drop_path_rate=0.3))
load_from = 'checkpoints/sf_b_in1k_224.pth'
