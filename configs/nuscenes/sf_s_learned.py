# Ablation: sf_s.py with DETR3D's 900 learned queries instead of the spatial tokens (the tokens
# still run through the backbone, unconditioned; their last norm gets no gradient, hence
# find_unused_parameters for DDP).
_base_ = ['./sf_s.py']

model = dict(query_mode='learned', num_queries=900, conditioning='none')
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
