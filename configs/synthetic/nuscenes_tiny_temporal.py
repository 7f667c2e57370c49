# The `make demo` detector (nuscenes_tiny.py) with the previous key frame, as
# configs/nuscenes/sf_s_temporal.py: same data, schedule and model otherwise, so the two compare
# directly (README, "Temporal input").
_base_ = ['./nuscenes_tiny.py']

num_frames = 2
model = dict(num_frames=num_frames, head=dict(velocity_matching=dict(grid=5, step=4.0)))
train_dataloader = dict(dataset=dict(num_frames=num_frames))
val_dataloader = dict(dataset=dict(num_frames=num_frames))
test_dataloader = val_dataloader
