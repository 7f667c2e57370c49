# Ablation: the same ray conditioning applied to the backbone's FINAL spatial tokens instead of
# its initial ones (the backbone itself then sees no camera information).
_base_ = ['../nuscenes_tiny.py']

model = dict(conditioning='ray', conditioning_at='output')
