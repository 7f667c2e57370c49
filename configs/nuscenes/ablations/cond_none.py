# Ablation: no camera conditioning of the initial spatial tokens (identity).
_base_ = ['../sf_s.py']

model = dict(conditioning='none')
