# Ablation: conditioning on PETR-style frustum points at six depths along each token ray.
_base_ = ['../sf_s.py']

model = dict(conditioning='frustum')
