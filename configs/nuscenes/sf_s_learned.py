# Ablation: sf_s.py with DETR3D's learned queries instead of the spatial tokens, as many as sf_s.py
# has token queries, with its pixel supervision and denoising (the tokens still run through the
# backbone, unconditioned; their last norm gets no gradient, hence find_unused_parameters for DDP).
_base_ = ['./sf_s.py']

num_queries = 6 * 10 * 15 * _base_.model.depth_bins  # as many as sf_s.py has token queries (3600)
model = dict(query_mode='learned', num_queries=num_queries, conditioning='none', token_loss=None, depth_bins=1)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
