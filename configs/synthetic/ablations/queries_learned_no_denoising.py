# Ablation: the learned-query baseline of no_denoising.py (1440 queries) without denoising queries.
_base_ = ['./queries_learned_1440.py']
model = dict(denoising=None)
