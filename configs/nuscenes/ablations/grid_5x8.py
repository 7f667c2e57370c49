# Ablation: 5 x 8 spatial tokens per view (240 tokens over the 6 views, x 8 depth bins = 1920
# hypotheses, of which sf_s.py's 900 are selected).
_base_ = ['../sf_s.py']

model = dict(backbone=dict(spatial_grid=(5, 8)))
