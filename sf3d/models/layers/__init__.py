"""Building blocks shared by sf3d models: attention, FFN, position and camera encodings."""
from .attention import Attention, SpatialReduction
from .camera_encoding import CameraConditioning
from .deformable_attention import BoxDeformableAttention
from .ffn import Mlp
from .pos_encoding import PosConv, conv2d_channels_last, grid_sincos_encoding, sincos_2d

__all__ = ['Attention', 'BoxDeformableAttention', 'CameraConditioning', 'SpatialReduction', 'Mlp', 'PosConv',
           'conv2d_channels_last', 'grid_sincos_encoding', 'sincos_2d']
