# Ablation of the demo recipe: no denoising queries (spatial tokens with 4 depth bins only).
_base_ = ['../nuscenes_tiny.py']
model = dict(denoising=None)
