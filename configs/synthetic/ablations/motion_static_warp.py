# The dense-motion demo model (../nuscenes_tiny_motion.py) with the correlation window centred on
# each pixel's static-world flow (DenseMotion(static_warp=True): the pixel depth unprojected and
# projected into the previous camera), so that the window searches object motion only instead of
# the ego's parallax (README, "Temporal input"). Same window, data and schedule.
_base_ = ['../nuscenes_tiny_motion.py']

model = dict(motion=dict(static_warp=True))
