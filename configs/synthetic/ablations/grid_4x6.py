# Ablation: 4 x 6 spatial tokens per view (144 tokens over the 6 views, x 8 depth bins = 1152
# hypotheses, of which the demo's 360 are selected).
_base_ = ['../nuscenes_tiny.py']

model = dict(backbone=dict(spatial_grid=(4, 6)))
