# UperNet on SpatialFormer-S, ADE20K, 160k iterations, 512 x 512 crops (supplementary Sec. 3):
# PPM (pool scales 1, 2, 3, 6) + FPN fusion of the four stages, an auxiliary FCN head on stage 3
# (weight 0.4). Single-scale test; multi-scale + flip: add
#   --cfg-options "model.test_cfg.aug.scales=[0.5,0.75,1.0,1.25,1.5,1.75]" model.test_cfg.aug.flip=True
_base_ = [
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/ade20k_160k.py',  # includes default_runtime.py
]

model = dict(
    type='EncoderDecoder2D',
    data_preprocessor=dict(type='ImageDataPreprocessor'),
    backbone=dict(type='SpatialFormer', arch='s', spatial_grid=(8, 8), drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/sf_s_imagenet.pth')),
    decode_head=dict(type='UPerHead', num_classes={{_base_.num_classes}}, channels=512),
    auxiliary_head=dict(type='FCNHead', num_classes={{_base_.num_classes}}, in_index=2, channels=256,
                        loss_weight=0.4),
    test_cfg=dict(mode='whole'),
)
# UperNet does not read the final spatial tokens: their norm gets no gradient
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
