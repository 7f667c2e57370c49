# Ablation: conditioning on PETR-style frustum points at six depths along each token ray.
_base_ = ['../nuscenes_tiny.py']

model = dict(conditioning='frustum')
