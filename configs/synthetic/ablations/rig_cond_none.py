# Rig-varied training (../nuscenes_tiny_rig.py) with the none conditioning of cond_none.py.
_base_ = ['../nuscenes_tiny_rig.py']

model = dict(conditioning='none')
