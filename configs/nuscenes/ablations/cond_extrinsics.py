# Ablation: conditioning on extrinsics only (LiDAR-frame rays through a canonical pinhole).
_base_ = ['../sf_s.py']

model = dict(conditioning='extrinsics')
