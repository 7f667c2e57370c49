# Ablation: no camera conditioning of the initial spatial tokens (identity).
_base_ = ['../nuscenes_tiny.py']

model = dict(conditioning='none')
