"""Semantic segmentors; importing this module registers them in ``sf3d.registry.MODELS``."""
from .encoder_decoder import SEG_HEADS, EncoderDecoder2D

__all__ = ['SEG_HEADS', 'EncoderDecoder2D']
