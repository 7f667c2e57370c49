"""Packing a multi-view sample into model inputs, and collating samples into a batch.

``Pack3DDetInputs`` returns ``dict(inputs=dict(img=(N_cam, 3, H, W) float32, or uint8 for uint8 images),
data_samples=dict(...))``; ``multiview_collate`` (registered in ``FUNCTIONS``; configs use
``collate_fn=dict(type='sf3d.multiview_collate')``) turns a list of those into
``dict(inputs=dict(img=(B, N_cam, 3, H, W)), data_samples=dict(cameras=MultiViewCameras
(B, N_cam, ...), every other key -> list of B values))``. Two-frame samples
(``NuScenesMultiViewDataset(num_frames=2)``) are packed alike with N_cam = 12 views (the current 6,
then the previous frame's 6); ``time_delta``, ``prev_valid`` and ``num_frames`` become lists of B.
"""
from typing import Dict, List, Sequence

import cv2
import numpy as np
import torch

from sf3d.registry import FUNCTIONS, TRANSFORMS
from sf3d.structures import MultiViewCameras

DEFAULT_META_KEYS = ('token', 'sample_idx', 'timestamp', 'scene_token', 'ego2global', 'lidar2ego', 'cam_names',
                     'img_path', 'img_shape', 'ori_shape', 'pad_shape', 'img_norm_cfg', 'img_aug_params',
                     'bev_aug_matrix', 'pcd_rotation_angle', 'pcd_scale_factor', 'pcd_trans',
                     'pcd_horizontal_flip', 'pcd_vertical_flip', 'time_delta', 'prev_valid', 'num_frames')


@TRANSFORMS.register_module()
class Pack3DDetInputs:
    """Pack a sample for the model.

    Output:
        inputs: ``dict(img=Tensor (N_cam, 3, H, W))`` (all views must share one size: use
            ``PadMultiViewImage`` or ``ResizeCropFlipMultiView`` before); uint8 when every view is
            uint8 (the pixel work then runs in the model's ``MultiViewDataPreprocessor``),
            float32 otherwise.
        data_samples: dict with ``cameras`` (``MultiViewCameras`` converted to float32), the
            requested GT keys present in the sample (``gt_bboxes_3d`` as float32 ``LiDARBoxes``,
            ``gt_labels_3d`` as a LongTensor (N,), ``gt_names_3d`` as a list), ``img_path`` (list
            of N_cam paths) and the ``meta_keys`` present; ``pad_shape`` defaults to the image size.

    Args:
        keys: what to pack; ``'img'`` is required, GT keys missing from a sample (test mode) are skipped.
        meta_keys: sample keys copied as they are into ``data_samples``.
    """

    def __init__(self, keys: Sequence[str] = ('img', 'gt_bboxes_3d', 'gt_labels_3d'),
                 meta_keys: Sequence[str] = DEFAULT_META_KEYS):
        if 'img' not in keys:
            raise ValueError(f"Pack3DDetInputs: keys must contain 'img', got {tuple(keys)}")
        self.keys = tuple(keys)
        self.meta_keys = tuple(meta_keys)

    def __call__(self, results: Dict) -> Dict:
        imgs = results.get('img')
        if not imgs:
            raise KeyError("Pack3DDetInputs needs results['img'] (a list of (H, W, 3) arrays)")
        shapes = {img.shape for img in imgs}
        if len(shapes) != 1:
            raise ValueError(f'Pack3DDetInputs: camera images differ in shape {sorted(shapes)}; add '
                             'PadMultiViewImage or ResizeCropFlipMultiView to the pipeline')
        h, w, c = imgs[0].shape
        dtype = np.uint8 if all(view.dtype == np.uint8 for view in imgs) else np.float32
        planes = np.empty((len(imgs), c, h, w), dtype)  # (N, 3, H, W)
        for i, view in enumerate(imgs):  # one copy per view, straight into the (3, H, W) layout
            if view.dtype == dtype and view.flags.c_contiguous and c == 3:
                cv2.split(view, list(planes[i]))  # writes into the planes; faster than numpy's strided copy
            else:
                planes[i] = view.transpose(2, 0, 1)
        img = torch.from_numpy(planes)
        samples: Dict = dict(cameras=results['cameras'].to(torch.float32))
        if 'images' in results:
            samples['img_path'] = [info['img_path'] for info in results['images'].values()]
        for key in self.meta_keys:
            if key in results and key not in samples:
                samples[key] = results[key]
        samples.setdefault('pad_shape', tuple(img.shape[-2:]))
        for key in self.keys:
            if key == 'img' or key not in results:
                continue
            value = results[key]
            if key == 'gt_bboxes_3d':
                value = value.to(torch.float32)
            elif key == 'gt_labels_3d':
                value = torch.as_tensor(np.asarray(value), dtype=torch.long)
            elif key == 'gt_names_3d':
                value = list(value)
            samples[key] = value
        return dict(inputs=dict(img=img), data_samples=samples)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(keys={self.keys}, meta_keys={self.meta_keys})'


@FUNCTIONS.register_module()
def multiview_collate(batch: List[Dict]) -> Dict:
    """Collate ``Pack3DDetInputs`` outputs.

    Returns ``dict(inputs=dict(img=(B, N_cam, 3, H, W)), data_samples=dict(cameras=
    MultiViewCameras.stack (B, N_cam, ...), key=[B values] for every other key))``. Images of
    different sizes are zero-padded at the bottom/right to the largest (H, W); ``pad_shape`` is
    then that size for every sample (intrinsics and ``image_size`` are unchanged).
    """
    if not batch:
        raise ValueError('multiview_collate: empty batch')
    imgs = [b['inputs']['img'] for b in batch]
    if len({img.shape[:2] for img in imgs}) != 1:
        raise ValueError(f'multiview_collate: samples differ in (N_cam, C): {[tuple(i.shape) for i in imgs]}')
    h = max(img.shape[-2] for img in imgs)
    w = max(img.shape[-1] for img in imgs)
    out = imgs[0].new_zeros((len(imgs),) + tuple(imgs[0].shape[:2]) + (h, w))  # (B, N, 3, H, W)
    for i, img in enumerate(imgs):
        out[i, :, :, :img.shape[-2], :img.shape[-1]] = img
    keys = list(batch[0]['data_samples'])
    for b in batch[1:]:
        if set(b['data_samples']) != set(keys):
            raise ValueError(f'multiview_collate: samples carry different keys: {sorted(keys)} vs '
                             f'{sorted(b["data_samples"])}')
    samples = {key: [b['data_samples'][key] for b in batch] for key in keys}
    samples['cameras'] = MultiViewCameras.stack(samples['cameras'])
    samples['pad_shape'] = [(h, w)] * len(batch)
    return dict(inputs=dict(img=out), data_samples=samples)
