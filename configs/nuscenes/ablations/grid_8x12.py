# Ablation: 8 x 12 spatial tokens per view (576 queries over the 6 views).
_base_ = ['../sf_s.py']

model = dict(backbone=dict(spatial_grid=(8, 12)))
