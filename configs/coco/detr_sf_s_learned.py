# The same DETR-style detector with 100 learned queries (and learned reference boxes) instead
# of the spatial tokens: the baseline of the token-query comparison. The backbone's final
# spatial-token norm then gets no gradient, hence find_unused_parameters for DDP.
_base_ = ['./detr_sf_s.py']

model = dict(query_mode='learned', num_queries=100)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
