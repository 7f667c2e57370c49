# The learned-query baseline of nuscenes_tiny.py at the same budget: DETR3D's queries
# (nn.Embedding(Q, 2 * C), reference points a learned map of the query), as many as the
# spatial-token model has (6 views x 6 x 10 = 360), no camera conditioning, no token loss.
_base_ = ['./nuscenes_tiny.py']

model = dict(query_mode='learned', num_queries=360, conditioning='none', token_loss=None)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
