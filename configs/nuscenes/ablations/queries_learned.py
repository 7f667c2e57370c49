# Ablation: DETR3D's learned queries, as many as the base has spatial tokens (900 = 6 x 10 x 15).
# No camera conditioning, no token supervision; the tokens still run through the backbone and
# their last norm gets no gradient, hence find_unused_parameters for DDP.
_base_ = ['../sf_s.py']

num_queries = 6 * _base_.model.backbone.spatial_grid[0] * _base_.model.backbone.spatial_grid[1] * _base_.model.depth_bins
model = dict(query_mode='learned', num_queries=num_queries, conditioning='none', token_loss=None, depth_bins=1)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
