# ade_tiny_maskformer.py with 25 learned queries: the baseline of the token-query comparison.
_base_ = ['./ade_tiny_maskformer.py']

model = dict(decode_head=dict(query_mode='learned'))
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
