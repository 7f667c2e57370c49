# The two-frame demo detector (nuscenes_tiny_temporal.py) with dense motion supervision
# (sf3d/models/layers/motion.py): a correlation between the two frames, supervised per pixel with
# each GT box's projected centre motion, gives the velocity of every predicted box (README,
# "Temporal input"). Same data, schedule and model otherwise.
_base_ = ['./nuscenes_tiny_temporal.py']

# Stride 16 (the second FPN level): 14 x 26 cells at 224 x 416. On the demo set, 22 % of the
# pixels inside GT boxes move more than 256 px across between key frames (the ego's parallax on
# near objects), 13 % more than 16 px down; a window of +-16 cells (256 px) across and +-2 cells
# (32 px) down holds about three quarters of them, and the rest are left out of the losses.
model = dict(motion=dict(level=1, radius=(2, 16), match_dims=32, hidden=64))
