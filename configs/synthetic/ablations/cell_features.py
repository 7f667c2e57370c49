# Lever: each final spatial token gets the mean of the stride-8 FPN level over its cell before the
# token heads (class, depth bins, in-cell offsets) read it (sf3d/models/layers/cell_features.py;
# README "Convergence", part 7).
_base_ = ['../nuscenes_tiny.py']
model = dict(cell_features=True)
