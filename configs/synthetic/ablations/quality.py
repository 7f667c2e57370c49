# The demo detector with localisation-quality class targets (sf3d/models/layers/quality.py): a matched
# or denoising positive's target is the fraction of the devkit's AP distance thresholds (0.5, 1, 2, 4 m)
# its centre is within, under the varifocal loss (RT-DETR's alpha 0.75, gamma 2).
_base_ = ['../nuscenes_tiny.py']

model = dict(head=dict(quality=dict(thresholds=(0.5, 1.0, 2.0, 4.0), alpha=0.75, gamma=2.0)))
