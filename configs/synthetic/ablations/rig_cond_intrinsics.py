# Rig-varied training (../nuscenes_tiny_rig.py) with the intrinsics conditioning of cond_intrinsics.py.
_base_ = ['../nuscenes_tiny_rig.py']

model = dict(conditioning='intrinsics')
