# Ablation: of the 1440 token hypotheses, only the 360 of highest token-class score become queries
# (DINO's query selection): the decoder cost of single_depth.py with the 4 depth bins.
_base_ = ['../nuscenes_tiny.py']
model = dict(num_select=6 * 6 * 10)
