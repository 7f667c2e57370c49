# Ablation: 8 depth hypotheses per token (6 views x 6 x 10 tokens x 8 = 2880), of which the demo's
# 360 are selected: more coverage along each ray at the same decoder cost (README, "Convergence").
_base_ = ['../nuscenes_tiny.py']
model = dict(depth_bins=8)
