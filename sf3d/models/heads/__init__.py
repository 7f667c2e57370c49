from .cls_head import ClsHead
from .detr2d_head import DETR2DHead, HungarianMatcher2D
from .mask_transformer_head import MaskHungarianMatcher, MaskTransformerHead
from .uper_head import FCNHead, UPerHead

__all__ = ['ClsHead', 'DETR2DHead', 'FCNHead', 'HungarianMatcher2D', 'MaskHungarianMatcher', 'MaskTransformerHead',
           'UPerHead']
