# Ablation: the 60-minute token run (nuscenes_long.py: lr 1e-3, the quality targets) with keypoints.py's
# seven sampling points per query.
_base_ = ['../nuscenes_long.py']
model = dict(head=dict(keypoints=dict(num_points=7, spread=(1.0, 1.0, 0.5))))
