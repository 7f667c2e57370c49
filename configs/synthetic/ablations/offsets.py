# Ablation: in-cell offsets (each of the 8 depth hypotheses of a token predicts where in its cell the
# object centre projects; its reference lies on the ray through that pixel): 6 views x 6 x 10
# tokens x 8 bins = 2880 hypotheses, the demo's 360 selected (README, "Convergence").
_base_ = ['../nuscenes_tiny.py']
model = dict(token_offsets=True)
