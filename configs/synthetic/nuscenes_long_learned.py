# The learned-query baseline of nuscenes_long.py at the same budget (README, "Convergence"):
# DETR3D's queries, as many as the spatial-token model's decoder has (num_select = 360 of its
# 6 views x 6 x 10 tokens x 8 depth bins = 2880 hypotheses), no camera conditioning and no token
# supervision; the same pixel supervision, denoising, data, schedule and budget.
_base_ = ['./nuscenes_long.py']

num_queries = _base_.model.num_select  # as many as the token model's decoder has queries
model = dict(query_mode='learned', num_queries=num_queries, conditioning='none', token_loss=None, depth_bins=1,
             token_offsets=False, num_select=None)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
