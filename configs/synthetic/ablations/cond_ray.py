# Ablation: the initial spatial tokens see the full LiDAR-frame ray (Plücker; the base's setting).
_base_ = ['../nuscenes_tiny.py']

model = dict(conditioning='ray')
