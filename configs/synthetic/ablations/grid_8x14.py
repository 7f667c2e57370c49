# Ablation: 8 x 14 spatial tokens per view (672 queries over the 6 views).
_base_ = ['../nuscenes_tiny.py']

model = dict(backbone=dict(spatial_grid=(8, 14)))
