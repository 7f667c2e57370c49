# The learned-query baseline of nuscenes_long.py at the same budget (README, "Convergence"):
# DETR3D's queries, as many as the spatial-token model has (6 views x 6 x 10 tokens x 4 depth bins
# = 1440), no camera conditioning and no token supervision; the same pixel supervision, denoising,
# data, schedule and budget.
_base_ = ['./nuscenes_long.py']

num_queries = 6 * 6 * 10 * _base_.model.depth_bins
model = dict(query_mode='learned', num_queries=num_queries, conditioning='none', token_loss=None, depth_bins=1)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
