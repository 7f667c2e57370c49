# Rig-varied training (../nuscenes_tiny_rig.py) with DETR3D's learned queries, as queries_learned.py.
_base_ = ['../nuscenes_tiny_rig.py']

model = dict(query_mode='learned', num_queries=_base_.model.num_select, conditioning='none', token_loss=None,
             depth_bins=1, token_offsets=False, num_select=None)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
