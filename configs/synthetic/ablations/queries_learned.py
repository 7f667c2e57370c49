# Ablation: DETR3D's learned queries, as many as the demo's decoder has token queries (num_select =
# 360), with every option of the base that applies to learned queries (pixel supervision,
# denoising). No camera conditioning, no token supervision, no selection; the tokens still run
# through the backbone and their last norm gets no gradient, hence find_unused_parameters for DDP.
_base_ = ['../nuscenes_tiny.py']

num_queries = _base_.model.num_select
model = dict(query_mode='learned', num_queries=num_queries, conditioning='none', token_loss=None, depth_bins=1,
             token_offsets=False, num_select=None)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
