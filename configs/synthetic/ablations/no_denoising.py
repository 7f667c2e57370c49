# Ablation of the demo recipe before query selection: no denoising queries (all 1440 token
# hypotheses, 4 depth bins each, as measured).
_base_ = ['../nuscenes_tiny.py']
model = dict(denoising=None, num_select=None, depth_bins=4, token_offsets=False)
