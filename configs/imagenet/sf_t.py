_base_ = './sf_s.py'
model = dict(backbone=dict(arch='t', drop_path_rate=0.1))
