# Ablation: the same ray conditioning applied to the backbone's FINAL spatial tokens instead of
# its initial ones (the backbone itself then sees no camera information).
_base_ = ['../sf_s.py']

model = dict(conditioning='ray', conditioning_at='output')
