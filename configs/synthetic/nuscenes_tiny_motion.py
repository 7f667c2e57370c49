# The two-frame demo detector (nuscenes_tiny_temporal.py) with dense motion supervision
# (sf3d/models/layers/motion.py): a stride-8 correlation between the two frames, supervised per
# pixel with each GT box's projected centre motion, gives the velocity of every predicted box
# (README, "Temporal input"). Same data, schedule and model otherwise.
_base_ = ['./nuscenes_tiny_temporal.py']

# stride 8 (the first FPN level): 28 x 52 cells at 224 x 416; a window of +-16 cells (128 px)
# across and +-1 cell down holds 93 % of the GT centres' image motion on the demo set
model = dict(motion=dict(level=0, radius=(1, 16), match_dims=32, hidden=64))
