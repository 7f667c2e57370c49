"""One-to-many matching on the first decoder layers (H-DETR's hybrid layer scheme, Jia et al.,
CVPR 2023), for the Hungarian losses of :class:`~sf3d.models.heads.detr3d_head.DETR3DHead`.

DETR's one-to-one matching gives each GT box one positive query per layer; every other query near
the object is trained as background. With spatial-token queries several tokens (and several depth
hypotheses of one token) look at one object, so one-to-one matching trains most of them to stay
silent before any has learned to find it. H-DETR trains the first layers with each GT repeated
``k`` times in the Hungarian matching (up to ``k`` positives per GT) and the last layers one-to-one,
so the prediction, read from the last layer without NMS, stays duplicate-free.

What differs from H-DETR: the same queries (no extra query group; H-DETR's hybrid *branch* scheme
adds one), and the repeated targets keep the layer's loss normaliser at the number of GT times ``k``
(each positive weighs as a one-to-one positive does).

Measured at the demo budget (README, "Convergence", part 7): at the demo's lr 3e-3 training diverged
near iteration 200, for k = 3 on two of three layers and for k = 2 on the first; off by default.

Axis names: G GT boxes, M matched pairs.
"""
from __future__ import annotations

from torch import Tensor

__all__ = ['OneToManyLayers']


class OneToManyLayers:
    """Which decoder layers match one-to-many, and the repeated targets they match against.

    Args:
        k: copies of each GT in the matching of those layers (>= 1; 1 is one-to-one).
        num_layers: the first ``num_layers`` decoder layers match one-to-many.
        decoder_layers: the decoder's depth D; ``num_layers`` must leave at least its last layer
            one-to-one (the prediction is read from it without NMS).
    """

    def __init__(self, *, k: int = 4, num_layers: int = 1, decoder_layers: int):
        if int(k) != k or k < 1:
            raise ValueError(f'OneToManyLayers: k must be an integer >= 1, got {k}')
        if int(num_layers) != num_layers or num_layers < 1:
            raise ValueError(f'OneToManyLayers: num_layers must be an integer >= 1, got {num_layers}')
        if num_layers >= decoder_layers:
            raise ValueError(f'OneToManyLayers: num_layers={num_layers} must leave the last of the '
                             f'decoder\'s {decoder_layers} layers one-to-one (the prediction is read from it '
                             'without NMS)')
        self.k, self.num_layers = int(k), int(num_layers)

    def repeats(self, layer: int) -> int:
        """Copies of each GT at decoder layer ``layer`` (``k`` or 1)."""
        return self.k if layer < self.num_layers else 1

    @staticmethod
    def expand(repeats: int, codes: Tensor, labels: Tensor, flag_targets: dict) -> tuple[Tensor, Tensor, dict]:
        """One sample's targets (G, 10) codes, (G,) labels, {key: (G,)} flag targets -> the same with
        every GT ``repeats`` times, copy-major (copy ``j`` of GT ``g`` is row ``j * G + g``, so copy 0
        keeps the indices of a fixed assignment)."""
        if repeats == 1:
            return codes, labels, flag_targets
        return (codes.repeat(repeats, 1), labels.repeat(repeats),
                {key: t.repeat(repeats) for key, t in flag_targets.items()})

    def __repr__(self) -> str:
        return f'OneToManyLayers(k={self.k}, num_layers={self.num_layers})'
