# sf_s.py with the previous key frame (0.5 s earlier in nuScenes): the dataset appends its six views,
# with cameras from the current LiDAR frame (the ego motion composed in), and the seconds between
# the frames; the backbone and FPN run on both (the previous frame without gradient), and each
# decoder layer matches the previous frame over a 5 x 5 grid of velocity hypotheses, 4 m/s apart,
# around the velocity of the layer before (sf3d/models/layers/temporal.py). Velocity is predicted
# from motion in time instead of appearance. The first sample of a scene repeats its own frame.
# Info files need the `prev` entries: regenerate them with tools/create_data.py (README).
_base_ = ['./sf_s.py']

num_frames = 2
model = dict(num_frames=num_frames, head=dict(velocity_matching=dict(grid=5, step=4.0)))
train_dataloader = dict(dataset=dict(num_frames=num_frames))
val_dataloader = dict(dataset=dict(num_frames=num_frames))
test_dataloader = val_dataloader
