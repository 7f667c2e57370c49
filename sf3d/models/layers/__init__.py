"""Building blocks shared by sf3d models: attention, FFN, position encodings."""
from .attention import Attention, SpatialReduction
from .ffn import Mlp
from .pos_encoding import PosConv, grid_sincos_encoding, sincos_2d

__all__ = ['Attention', 'SpatialReduction', 'Mlp', 'PosConv', 'grid_sincos_encoding', 'sincos_2d']
