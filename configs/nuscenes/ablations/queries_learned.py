# Ablation: DETR3D's learned queries, as many as the base's decoder has token queries (num_select = 900).
# No camera conditioning, no token supervision; the tokens still run through the backbone and
# their last norm gets no gradient, hence find_unused_parameters for DDP.
_base_ = ['../sf_s.py']

num_queries = _base_.model.num_select  # as many as the token model's decoder has queries
model = dict(query_mode='learned', num_queries=num_queries, conditioning='none', token_loss=None, depth_bins=1,
             token_offsets=False, num_select=None)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
