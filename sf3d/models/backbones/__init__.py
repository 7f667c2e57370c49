"""Backbones: SpatialFormer (T/S/B) and torchvision ResNet-50/101 for the DETR3D baselines."""
from .resnet import ResNet
from .spatialformer import (SpatialFormer, checkpoint_filter_fn, load_pretrained, spatialformer_b, spatialformer_s,
                            spatialformer_t)

__all__ = ['ResNet', 'SpatialFormer', 'checkpoint_filter_fn', 'load_pretrained', 'spatialformer_t',
           'spatialformer_s', 'spatialformer_b']
