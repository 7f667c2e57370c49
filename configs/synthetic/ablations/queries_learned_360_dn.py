# Ablation: the learned-query baseline of select_360.py: 360 learned queries (the decoder size of
# select_360's selected hypotheses) with every option that applies to learned queries (pixel
# supervision, denoising).
_base_ = ['./queries_learned.py']
model = dict(num_queries=6 * 6 * 10)
