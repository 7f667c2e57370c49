# Ablation: the learned-query baseline (queries_learned.py) with keypoints.py's seven sampling points
# per query: the fair partner of keypoints.py.
_base_ = ['queries_learned.py']
model = dict(head=dict(keypoints=dict(num_points=7, spread=(1.0, 1.0, 0.5))))
