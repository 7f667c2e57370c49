# Ablation: no direction bins -- the (sin, cos) code regresses the full yaw, as DETR3D (README, "Convergence").
_base_ = ['../nuscenes_tiny.py']
model = dict(head=dict(direction=None))
