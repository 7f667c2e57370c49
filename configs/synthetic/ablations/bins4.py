# Ablation: 4 depth hypotheses per token (6 views x 6 x 10 tokens x 4 = 1440), of which the demo's 360
# are selected, no in-cell offsets -- the demo model before 8 bins and offsets became the default
# (README, "Convergence").
_base_ = ['../nuscenes_tiny.py']
model = dict(depth_bins=4, token_offsets=False)
