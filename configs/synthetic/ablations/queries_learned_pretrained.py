# Ablation: the learned-query baseline (queries_learned.py) started from the same dense-pretraining
# checkpoint as pretrained.py (its backbone, FPN and pixel head; see pretrained.py to make it).
_base_ = ['./queries_learned.py']
model = dict(pretrained='checkpoints/nuscenes_tiny_dense.pth')
