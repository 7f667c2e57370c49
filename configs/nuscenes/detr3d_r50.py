# detr3d_r101.py on ResNet-50. ImageNet weights, once, on a machine with internet:
#   python -c "import torch, torchvision as tv; torch.save(tv.models.ResNet50_Weights.IMAGENET1K_V2.get_state_dict(), 'checkpoints/resnet50_tv.pth')"
_base_ = ['./detr3d_r101.py']

pretrained = 'checkpoints/resnet50_tv.pth'
model = dict(backbone=dict(depth=50, pretrained=pretrained))
