# Ablation: the learned-query baseline (1440 queries) without denoising queries.
_base_ = ['./queries_learned.py']
model = dict(denoising=None)
