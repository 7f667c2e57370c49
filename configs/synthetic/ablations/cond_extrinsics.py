# Ablation: conditioning on extrinsics only (LiDAR-frame rays through a canonical pinhole).
_base_ = ['../nuscenes_tiny.py']

model = dict(conditioning='extrinsics')
