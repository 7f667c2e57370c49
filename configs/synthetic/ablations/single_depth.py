# Ablation: the demo recipe before the depth hypotheses, denoising and selection (one regressed
# depth per token: 360 queries), the model of the 3-seed comparison measured at commit 9c1a52b.
_base_ = ['../nuscenes_tiny.py']
model = dict(depth_bins=1, token_offsets=False, denoising=None, num_select=None)
