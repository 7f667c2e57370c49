# The multi-view detector around a DETR3D head (DESIGN.md): 6 post-norm decoder layers of 256
# dims, focal (weight 2.0) + L1 (0.25) losses with the same Hungarian costs, NMS-free top-300
# decoding; FPN on backbone strides 8, 16, 32 plus one extra level (4 levels, as DETR3D).
# DETR3D's FPN reads C3-C5: its ResNet returns C2-C5 and the FPN starts at level 1; here the
# backbones return out_indices=(1, 2, 3) = C3-C5 (strides 8, 16, 32), so the FPN starts at 0.
# Photometric distortion, normalisation and GridMask (ratio 0.5, prob 0.7) run on the device.
# The variants (configs/nuscenes/*.py) set the backbone and the query mode.
embed_dims = 256

model = dict(
    type='MultiViewDetector',
    data_preprocessor=dict(type='MultiViewDataPreprocessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], photometric=dict(), grid_mask=dict(ratio=0.5, prob=0.7)),
    backbone=dict(),  # set by the variant
    neck=dict(start_level=0, num_outs=4, add_extra_convs='on_output', relu_before_extra_convs=True),
    head=dict(num_classes=10, num_layers=6, num_heads=8, ffn_dims=512, dropout=0.1,
              pc_range=[-51.2, -51.2, -5.0, 51.2, 51.2, 3.0],  # the dataset's point_cloud_range
              post_center_range=[-61.2, -61.2, -10.0, 61.2, 61.2, 10.0],
              max_num=300, code_weights=[1.0] * 8 + [0.2, 0.2], cls_weight=2.0, reg_weight=0.25),
    embed_dims=embed_dims,
)
