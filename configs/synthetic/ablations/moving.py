# Lever: the moving-state flag (sf3d/models/layers/box_flags.py): a classifier per decoder layer says
# whether each box moves faster than 0.2 m/s, and a box it calls static predicts velocity 0 (so its
# attribute is the static one). README, "Convergence".
_base_ = ['../nuscenes_tiny.py']
model = dict(head=dict(moving=dict(speed=0.2, loss_weight=0.25)))
