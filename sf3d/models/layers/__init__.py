"""Building blocks shared by sf3d models: attention, FFN, position and camera encodings, the
loss normaliser of the DETR-style heads."""
from .attention import Attention, SpatialReduction
from .camera_encoding import CameraConditioning
from .deformable_attention import BoxDeformableAttention
from .ffn import Mlp
from .loss_normalizer import avg_num_targets
from .pos_encoding import PosConv, conv2d_channels_last, grid_sincos_encoding, sincos_2d

__all__ = ['Attention', 'BoxDeformableAttention', 'CameraConditioning', 'SpatialReduction', 'Mlp', 'PosConv',
           'avg_num_targets', 'conv2d_channels_last', 'grid_sincos_encoding', 'sincos_2d']
