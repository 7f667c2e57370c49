# The 60-minute run (nuscenes_long.py) with the previous key frame (nuscenes_tiny_temporal.py):
# same data and schedule, so the two compare directly (README, "Temporal input").
_base_ = ['./nuscenes_long.py']

num_frames = 2
model = dict(num_frames=num_frames, head=dict(velocity_matching=dict(grid=5, step=4.0)))
train_dataloader = dict(dataset=dict(num_frames=num_frames))
val_dataloader = dict(dataset=dict(num_frames=num_frames))
test_dataloader = val_dataloader
