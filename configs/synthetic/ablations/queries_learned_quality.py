# Ablation: the learned-query baseline (queries_learned.py) with ablations/quality.py's recipe: the
# localisation-quality class targets and gradient clipping at 10. The fair partner of quality.py.
_base_ = ['queries_learned.py']
model = dict(head=dict(quality=dict(_base_.quality_targets, _delete_=True)))
optim_wrapper = dict(clip_grad=dict(max_norm=10))
