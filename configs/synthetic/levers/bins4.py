# Lever: 4 depth hypotheses per spatial token (6 x 6 x 10 x 4 = 1440 queries).
_base_ = ['../nuscenes_tiny.py']
model = dict(depth_bins=4)
