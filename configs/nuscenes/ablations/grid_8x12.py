# Ablation: 8 x 12 spatial tokens per view (576 tokens over the 6 views, x 8 depth bins = 4608
# hypotheses, of which sf_s.py's 900 are selected).
_base_ = ['../sf_s.py']

model = dict(backbone=dict(spatial_grid=(8, 12)))
