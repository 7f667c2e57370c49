# Ablation: 5 x 8 spatial tokens per view (240 queries over the 6 views).
_base_ = ['../sf_s.py']

model = dict(backbone=dict(spatial_grid=(5, 8)))
