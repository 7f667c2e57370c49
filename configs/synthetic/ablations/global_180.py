# Ablation: Far3D's global + adaptive queries at the demo's decoder size: the 180 best token
# hypotheses plus 180 learned (DETR3D) queries = 360, as queries_learned.py has. The learned half
# covers the objects that no selected hypothesis is near (README, "Convergence"); measured with
# 4 depth bins, then the default.
_base_ = ['../nuscenes_tiny.py']
model = dict(num_select=180, global_queries=180, depth_bins=4, token_offsets=False)
