# Ablation: the learned-query baseline (queries_learned.py) with ablations/quality.py's recipe: the
# localisation-quality class targets and gradient clipping at 10. The fair partner of quality.py.
_base_ = ['queries_learned.py']
model = dict(head=dict(quality=dict(_base_.quality_targets, _delete_=True)))
# Since part 10 queries_learned.py has both; this config keeps part 9's recipe: the backbone at the full step.
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=1.0)}), clip_grad=dict(max_norm=10))
