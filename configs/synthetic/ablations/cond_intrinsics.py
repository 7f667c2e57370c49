# Ablation: conditioning on intrinsics only (camera-frame ray directions, extrinsics unseen).
_base_ = ['../nuscenes_tiny.py']

model = dict(conditioning='intrinsics')
