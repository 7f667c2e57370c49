# Ablation: 8 x 14 spatial tokens per view (672 tokens over the 6 views, x 4 depth bins = 2688
# hypotheses, of which the demo's 360 are selected), as measured against 8 depth bins on 6 x 10
# tokens (README, "Convergence").
_base_ = ['../nuscenes_tiny.py']

model = dict(backbone=dict(spatial_grid=(8, 14)), depth_bins=4, token_offsets=False)
