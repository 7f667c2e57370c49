# Ablation: one-hot class targets under the focal loss, as DETR3D, and DETR3D's gradient clipping at 35:
# the demo recipe of part 6 (README, "Convergence", part 8 measures the quality targets against it).
_base_ = ['../nuscenes_tiny.py']
model = dict(head=dict(quality=None))
optim_wrapper = dict(clip_grad=dict(max_norm=35))
