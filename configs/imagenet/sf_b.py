_base_ = './sf_s.py'
model = dict(backbone=dict(arch='b', drop_path_rate=0.3))
