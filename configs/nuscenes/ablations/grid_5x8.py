# Ablation: 5 x 8 spatial tokens per view (240 tokens over the 6 views, x 4 depth bins = 960
# hypotheses, of which sf_s.py's 900 are selected).
_base_ = ['../sf_s.py']

model = dict(backbone=dict(spatial_grid=(5, 8)))
