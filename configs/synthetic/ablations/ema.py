# The demo detector with an exponential moving average of its weights (mmengine's EMAHook), the
# average validated and saved: averaged = 0.99 averaged + 0.01 weights after every iteration, so it
# spans about the last 100 of the 640 iterations.
_base_ = ['../nuscenes_tiny.py']

custom_hooks = [dict(type='EpochSeedHook'), dict(type='EMAHook', momentum=0.01, priority=49)]
