# Ablation: no in-cell offsets -- every hypothesis on the ray through its token cell's centre (6 views
# x 6 x 10 tokens x 8 bins = 2880 hypotheses, the demo's 360 selected; README, "Convergence").
_base_ = ['../nuscenes_tiny.py']
model = dict(token_offsets=False)
