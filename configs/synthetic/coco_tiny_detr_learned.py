# coco_tiny_detr.py with 16 learned queries (and learned reference boxes) instead of the spatial
# tokens: the baseline of the token-query convergence comparison.
_base_ = ['./coco_tiny_detr.py']

model = dict(query_mode='learned', num_queries=16)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
