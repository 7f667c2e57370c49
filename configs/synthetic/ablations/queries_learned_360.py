# Ablation: the learned-query baseline of single_depth.py (360 queries, no denoising).
_base_ = ['./queries_learned.py']
model = dict(num_queries=360, denoising=None)
