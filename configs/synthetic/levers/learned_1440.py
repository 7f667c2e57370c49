# Baseline for bins4: DETR3D's learned queries, as many as bins4 has queries (1440).
_base_ = ['../ablations/queries_learned.py']
model = dict(num_queries=6 * 6 * 10 * 4)
