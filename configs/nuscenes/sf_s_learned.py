# Ablation: sf_s.py with DETR3D's learned queries instead of the spatial tokens, as many as sf_s.py's
# decoder has token queries (900, DETR3D's number), with its pixel supervision and denoising (the
# tokens still run through the backbone, unconditioned; their last norm gets no gradient, hence
# find_unused_parameters for DDP).
_base_ = ['./sf_s.py']

num_queries = _base_.model.num_select  # as many as the token model's decoder has queries
model = dict(query_mode='learned', num_queries=num_queries, conditioning='none', token_loss=None, depth_bins=1,
             token_offsets=False, num_select=None)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
