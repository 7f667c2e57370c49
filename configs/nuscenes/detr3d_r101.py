# The DETR3D baseline in this codebase: ResNet-101 (C3-C5, stem + stage 1 frozen, BN in eval)
# + FPN + the same head, 900 learned queries (nn.Embedding(900, 2 * 256)), 1600x900 input.
# DETR3D's published R101 used DCN and FCOS3D weights (NDS 0.434 val); this one is plain
# torchvision ResNet-101: save ImageNet weights once on a machine with internet:
#   python -c "import torch, torchvision as tv; torch.save(tv.models.ResNet101_Weights.IMAGENET1K_V2.get_state_dict(), 'checkpoints/resnet101_tv.pth')"
# A missing file stops the build with that advice; `pretrained=None` trains from scratch.
_base_ = ['../_base_/datasets/nuscenes.py', '../_base_/models/detr3d_head.py',
          '../_base_/schedules/detr3d_24e.py', '../_base_/default_runtime.py']

pretrained = 'checkpoints/resnet101_tv.pth'
model = dict(
    backbone=dict(type='ResNet', depth=101, out_indices=(1, 2, 3), frozen_stages=1, norm_eval=True,
                  pretrained=pretrained),
    query_mode='learned', num_queries=900, conditioning='none',
)
default_hooks = dict(checkpoint=dict(interval=2, max_keep_ckpts=3, save_best='NuScenes/NDS', rule='greater'))
