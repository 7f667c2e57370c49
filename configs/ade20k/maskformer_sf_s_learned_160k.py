# The mask-transformer head with 100 learned queries instead of the selected spatial-token
# replicas: the baseline of the token-query comparison (see maskformer_sf_s_160k.py). The final
# spatial-token norm then gets no gradient, hence find_unused_parameters for DDP.
_base_ = ['./maskformer_sf_s_160k.py']

model = dict(decode_head=dict(query_mode='learned'))
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
