# Ablation: the demo with seven sampling points per query in every cross-attention instead of one
# (sf3d/models/layers/keypoints.py, Sparse4D's keypoints): the centre and the six face centres of a
# 2 x 2 x 1 m box about the reference point, offsets learned from the query.
_base_ = ['../nuscenes_tiny.py']
model = dict(head=dict(keypoints=dict(num_points=7, spread=(1.0, 1.0, 0.5))))
