"""Dense pretraining of a multi-view detector's backbone on its own camera images.

DETR3D does not start from ImageNet: it starts from FCOS3D, a monocular detector trained on the
nuScenes camera images, so its backbone and FPN already locate objects and their depth when the
decoder starts to learn. The analogue here trains what the detector's token and pixel supervision
train (:mod:`sf3d.models.detectors.multiview_detector`): the backbone, FPN and camera conditioning
with the dense token classifier + per-bin depth along each token's ray and the per-pixel class +
depth of the first FPN level -- and no decoder, so a step costs the backbone and little more.
Both query modes then start from the same checkpoint (``MultiViewDetector(pretrained=PATH)`` loads
its ``DENSE_PARTS``).

The model is a :class:`MultiViewDetector` in spatial-token mode built from the same config, so the
checkpoint's keys are the detector's; its queries and decoder are built but never run (they get no
gradient and are not transferred).
"""
from __future__ import annotations

from typing import Optional

from sf3d.models.detectors.multiview_detector import MultiViewDetector
from sf3d.registry import MODELS

__all__ = ['DensePretrainer']


@MODELS.register_module()
class DensePretrainer(MultiViewDetector):
    """Train the ``DENSE_PARTS`` of a spatial-token :class:`MultiViewDetector` (module docstring).

    Takes MultiViewDetector's arguments; needs ``query_mode='spatial_tokens'`` and ``token_loss``
    (``pixel_loss`` optional), and ignores ``num_select``, ``denoising`` (no decoder runs).
    """

    def __init__(self, **kwargs):
        kwargs.update(num_select=None, denoising=None)
        if kwargs.get('query_mode', 'spatial_tokens') != 'spatial_tokens' or kwargs.get('token_loss') is None:
            raise ValueError(f"DensePretrainer: needs query_mode='spatial_tokens' and token_loss (the dense token "
                             f"supervision it trains), got query_mode={kwargs.get('query_mode')!r}, "
                             f"token_loss={kwargs.get('token_loss')}")
        super().__init__(**kwargs)

    def forward(self, inputs: dict, data_samples: Optional[dict] = None, mode: str = 'loss') -> dict:
        """inputs ``dict(img=Tensor (B, N_cam, 3, H, W))``, data_samples as for
        :meth:`MultiViewDetector.forward` -> ``'loss'``: ``token.loss_cls``, ``token.loss_depth`` (+
        ``pixel.loss_cls``, ``pixel.loss_depth`` with ``pixel_loss``); ``'tensor'``: the dense
        predictions ``token_cls_scores`` (B, Q, K), ``token_depths`` (B, Q), ``token_rays``,
        ``token_bins`` (+ ``pixel_preds`` (B, N, K + 1, h, w))."""
        if mode not in ('loss', 'tensor'):
            raise ValueError(f"DensePretrainer: mode must be 'loss' or 'tensor' (it predicts no boxes; load its "
                             f"checkpoint with MultiViewDetector(pretrained=...)), got {mode!r}")
        img = self._images(inputs)
        cameras = self._cameras(data_samples, img.shape[0], img.shape[1], img.device)
        feats, tokens = self.extract_feats(img, cameras)
        outputs = self._token_outputs(tokens, self.token_queries(tokens, cameras, img.shape[-2:]))
        if self.pixel_loss is not None:
            outputs['pixel_preds'] = self._pixel_outputs(feats)  # (B, N, K + 1, h, w)
        if mode == 'tensor':
            return outputs
        boxes, labels = self._ground_truth(data_samples, img.device)
        losses, _ = self._token_losses(outputs, boxes, labels, cameras, img.shape[-2:])
        if self.pixel_loss is not None:
            losses.update(self._pixel_losses(outputs['pixel_preds'], boxes, labels, cameras))
        return losses
