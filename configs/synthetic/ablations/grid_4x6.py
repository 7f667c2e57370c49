# Ablation: 4 x 6 spatial tokens per view (144 queries over the 6 views).
_base_ = ['../nuscenes_tiny.py']

model = dict(backbone=dict(spatial_grid=(4, 6)))
