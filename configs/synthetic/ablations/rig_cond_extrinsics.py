# Rig-varied training (../nuscenes_tiny_rig.py) with the extrinsics conditioning of cond_extrinsics.py.
_base_ = ['../nuscenes_tiny_rig.py']

model = dict(conditioning='extrinsics')
