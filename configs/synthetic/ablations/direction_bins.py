# Lever: direction bins (FCOS3D's dir_cls) -- the (sin, cos) code regresses the yaw folded into the
# half-plane around pi / 4 and a classifier per decoder layer says whether the box faces the other way
# (sf3d.models.layers.heading; README, "Convergence").
_base_ = ['../nuscenes_tiny.py']
model = dict(head=dict(direction=dict(offset=0.7854, loss_weight=0.25)))
