# Ablation: the initial spatial tokens see the full LiDAR-frame ray (Plücker; the base's setting).
_base_ = ['../sf_s.py']

model = dict(conditioning='ray')
