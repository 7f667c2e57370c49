"""Collating ``Pack2DInputs`` items into a batch (the 2D data contract's ``sf3d.image_collate``).

Configs: ``collate_fn=dict(type='sf3d.image_collate', size_divisor=32)``.
"""
from typing import Dict, List

import torch

from sf3d.registry import FUNCTIONS

SEG_IGNORE = 255


def _round_up(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor


@FUNCTIONS.register_module()
def image_collate(batch: List[Dict], size_divisor: int = 32, pad_seg_map: bool = True) -> Dict:
    """Stack single-image items into ``dict(inputs=uint8 (B, 3, Hp, Wp), data_samples=dict(key=[B values]
    for every key, pad_shape=[(Hp, Wp)] * B))``.

    Images are zero-padded at the bottom/right to the batch's largest (h, w), each rounded up to a
    multiple of ``size_divisor``. Every sample must carry the same ``data_samples`` keys.

    ``gt_seg_map``: a map at its sample's ``img_shape`` (a training map, in the network-input frame) is
    padded the same way with 255 (ignore) to (Hp, Wp); a map of another shape (a test map, left at
    ``ori_shape``) is left as it is. When a test image is not resized its ``ori_shape`` equals its
    ``img_shape`` and its map is padded too: ``IoUMetric`` crops that all-ignore padding off again
    (``pad_seg_map=False`` in test loaders avoids it).
    ``gt_masks`` stay at ``img_shape`` (K, h, w).
    """
    if not batch:
        raise ValueError('image_collate: empty batch')
    if not isinstance(size_divisor, int) or size_divisor < 1:
        raise ValueError(f'image_collate: size_divisor must be an int >= 1, got {size_divisor!r}')
    imgs = [item['inputs'] for item in batch]
    for i, img in enumerate(imgs):
        if not isinstance(img, torch.Tensor) or img.dim() != 3 or img.shape[0] != 3:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"image_collate: batch[{i}]['inputs'] must be a Tensor (3, h, w), got {shape}")
    if len({img.dtype for img in imgs}) != 1:
        raise ValueError(f'image_collate: images differ in dtype: {[img.dtype for img in imgs]}')
    hp = _round_up(max(img.shape[1] for img in imgs), size_divisor)
    wp = _round_up(max(img.shape[2] for img in imgs), size_divisor)
    inputs = imgs[0].new_zeros((len(imgs), 3, hp, wp))  # (B, 3, Hp, Wp)
    for i, img in enumerate(imgs):
        inputs[i, :, :img.shape[1], :img.shape[2]] = img
    keys = list(batch[0]['data_samples'])
    for i, item in enumerate(batch[1:], 1):
        if set(item['data_samples']) != set(keys):
            raise ValueError(f'image_collate: batch[{i}] carries data_samples keys {sorted(item["data_samples"])}, '
                             f'batch[0] {sorted(keys)}')
    samples = {key: [item['data_samples'][key] for item in batch] for key in keys}
    if pad_seg_map and 'gt_seg_map' in samples:
        samples['gt_seg_map'] = [_pad_seg(seg, sample_shape, hp, wp) for seg, sample_shape in
                                 zip(samples['gt_seg_map'], [item['inputs'].shape[1:] for item in batch])]
    samples['pad_shape'] = [(hp, wp)] * len(batch)
    return dict(inputs=inputs, data_samples=samples)


def _pad_seg(seg: torch.Tensor, img_shape, hp: int, wp: int) -> torch.Tensor:
    """(Hp, Wp) ``seg`` padded with 255 when it has the image's (h, w); else ``seg`` unchanged."""
    if tuple(seg.shape) != tuple(img_shape):
        return seg
    out = seg.new_full((hp, wp), SEG_IGNORE)  # (Hp, Wp)
    out[:seg.shape[0], :seg.shape[1]] = seg
    return out
