# Ablation: no query selection -- all 1440 token hypotheses (6 views x 6 x 10 tokens x 4 depth
# bins) become queries, the demo model measured before num_select and 8 bins (README, "Convergence").
_base_ = ['../nuscenes_tiny.py']
model = dict(num_select=None, depth_bins=4, token_offsets=False)
