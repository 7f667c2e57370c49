# sf_s.py at half resolution: every view resized to 800x450 and cropped to 800x448 (2 rows off
# the top; the cameras follow the crop). About 4x cheaper than 1600x928 per sample.
_base_ = ['./sf_s.py']

final_size = (448, 800)  # (H, W)
train_pipeline = [
    dict(type='LoadMultiViewImages', decode_scale=2),
    dict(type='ResizeCropFlipMultiView', final_size=final_size, is_train=False, interpolation='bilinear'),
    dict(type='ObjectRangeFilter', point_cloud_range={{_base_.point_cloud_range}}),
    dict(type='ObjectNameFilter', classes={{_base_.class_names}}),
    dict(type='Pack3DDetInputs', keys=('img', 'gt_bboxes_3d', 'gt_labels_3d')),
]
test_pipeline = [
    dict(type='LoadMultiViewImages', decode_scale=2),
    dict(type='ResizeCropFlipMultiView', final_size=final_size, is_train=False, interpolation='bilinear'),
    dict(type='Pack3DDetInputs', keys=('img', )),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
