# The learned-query baseline of nuscenes_long.py at the same budget (README, "Convergence"):
# DETR3D's queries, as many as the spatial-token model has (6 views x 6 x 10 = 360), no camera
# conditioning and no token supervision; the same pixel supervision, data, schedule and budget.
_base_ = ['./nuscenes_long.py']

model = dict(query_mode='learned', num_queries=360, conditioning='none', token_loss=None)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
