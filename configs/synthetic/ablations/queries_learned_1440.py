# Ablation: the learned-query baseline of select_all.py: as many learned queries as the demo has token
# hypotheses (1440 = 6 views x 6 x 10 tokens x 4 depth bins), with pixel supervision and denoising.
_base_ = ['./queries_learned.py']

model = dict(num_queries=6 * 6 * 10 * 4)
