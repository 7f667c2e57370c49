# Rig-varied training (../nuscenes_tiny_rig.py) with the frustum conditioning of cond_frustum.py.
_base_ = ['../nuscenes_tiny_rig.py']

model = dict(conditioning='frustum')
