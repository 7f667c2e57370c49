# Ablation: no moving flag -- every velocity regressed, as DETR3D (README, "Convergence", part 6).
_base_ = ['../nuscenes_tiny.py']
model = dict(head=dict(moving=None))
