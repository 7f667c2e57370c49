# Ablation: conditioning on intrinsics only (camera-frame ray directions, extrinsics unseen).
_base_ = ['../sf_s.py']

model = dict(conditioning='intrinsics')
