"""Backbones: SpatialFormer (T/S/B)."""
from .spatialformer import (SpatialFormer, checkpoint_filter_fn, load_pretrained, spatialformer_b, spatialformer_s,
                            spatialformer_t)

__all__ = ['SpatialFormer', 'checkpoint_filter_fn', 'load_pretrained', 'spatialformer_t', 'spatialformer_s',
           'spatialformer_b']
