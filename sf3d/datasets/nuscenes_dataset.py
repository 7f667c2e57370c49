"""``NuScenesMultiViewDataset``: the six camera views of every nuScenes key frame (optionally
also those of the previous key frame) + 3D GT.

Reads an info file in the mmdet3d 1.x 'v2' format (``sf3d.datasets.nuscenes_info``; files from
mmdet3d's own ``create_data`` load unchanged) and returns, per sample (``get_data_info``)::

    sample_idx, token, timestamp (s), scene_token (if stored), ego2global (4, 4), lidar2ego (4, 4)
    images      {CAM: {img_path, cam2img (3, 3), lidar2cam (4, 4), lidar2img (4, 4), sample_data_token,
                       timestamp}}   the 6 cameras in CAMERAS order; lidar2img derived (MultiViewCameras)
    lidar_path  (only with modality use_lidar=True)
    gt_bboxes_3d  LiDARBoxes (N, 9) [x, y, z_bottom, l, w, h, yaw, vx, vy] float64 (not in test_mode)
    gt_labels_3d  (N,) int64 indices into ``class_names``;  gt_names_3d (N,) class names

Two-frame input (``num_frames=2``; needs info files with ``prev``, written by sf3d's
``create_data`` since two-frame support): ``images`` holds 12 views, the 6 current ones, then the
previous key frame's 6 (0.5 s earlier in nuScenes) keyed ``f'{CAM}{PREV_SUFFIX}'`` ('CAM_FRONT@prev'),
in the same camera order: view ``f * 6 + i`` is camera ``i`` of frame ``f`` (0 current, 1 previous).
The previous views carry the same keys, with ``lidar2cam`` = previous lidar2cam @ ego_motion, i.e.
from the CURRENT LiDAR frame (so every transform treats the 12 views alike), and the sample adds::

    num_frames  2
    time_delta  float, s: timestamp - previous timestamp (0.0 without a previous frame)
    prev_valid  bool: False for the first sample of a scene, whose previous views are then copies of
                its current views (paths, cameras, tokens; PETRv2's fallback)

With ``num_frames=1`` (default) none of these keys exist and ``images`` holds the 6 current views.

All matrices are float64 numpy arrays. ``LoadMultiViewImages`` then moves the camera matrices
into one ``MultiViewCameras``.

GT selection (as mmdet3d's ``NuScenesDataset``): with ``use_valid_flag`` keep instances whose
``bbox_3d_isvalid`` is set (lidar + radar points > 0, what the devkit evaluates), else those
with ``num_lidar_pts > 0``; instances whose category is not in ``class_names`` (label -1) are
dropped; ``point_cloud_range`` optionally keeps only BEV centres strictly inside the range.
Velocity NaN (no neighbouring annotation) becomes 0; the info file's gravity-centre z becomes
the bottom-centre z.
"""
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmengine.dataset import BaseDataset

from sf3d.registry import DATASETS, TRANSFORMS
from sf3d.structures import MultiViewCameras, from_info_bbox3d

from .nuscenes_info import CAMERAS, CLASSES, CREATE_COMMAND, load_nuscenes_infos

DEFAULT_PREFIX = {**{cam: f'samples/{cam}' for cam in CAMERAS}, 'pts': 'samples/LIDAR_TOP'}
PREV_SUFFIX = '@prev'  # key suffix of a previous-frame view in ``images``: 'CAM_FRONT@prev'
NUM_FRAMES = (1, 2)


def prev_view_name(cam: str) -> str:
    """The ``images`` key of camera ``cam`` in the previous frame: ``'CAM_FRONT' -> 'CAM_FRONT@prev'``."""
    return f'{cam}{PREV_SUFFIX}'


def _intrinsics(matrix, where: str) -> np.ndarray:
    """(3, 3) intrinsics from a 3x3, or a 3x4 / 4x4 whose extra entries are those of ``[K 0; 0 1]``."""
    m = np.asarray(matrix, dtype=np.float64)
    k = m[:3, :3]
    padded = np.eye(max(m.shape))[:m.shape[0], :m.shape[1]]
    padded[:3, :3] = k
    if not np.allclose(m, padded):
        raise ValueError(f'{where}: cam2img of shape {m.shape} is not an intrinsic matrix [K 0; 0 1]: {m.tolist()}')
    return k


@DATASETS.register_module()
class NuScenesMultiViewDataset(BaseDataset):
    """Multi-view camera nuScenes dataset (module docstring for the sample dict).

    Args:
        ann_file: info file (relative to ``data_root`` unless absolute).
        data_root: nuScenes dataroot.
        class_names: detection classes; labels index this tuple (a subset of CLASSES allowed).
        modality: ``dict(use_camera=True, use_lidar=False)``; use_camera must be True.
        data_prefix: folder per camera (and ``pts``) joined with the info file's basenames;
            defaults to ``samples/<channel>``. A stored path with a folder part is taken
            relative to ``data_root`` instead.
        pipeline: transforms (configs or callables), built from ``sf3d.registry.TRANSFORMS``.
        test_mode: no GT in the samples.
        use_valid_flag: GT selection rule (module docstring).
        point_cloud_range: optional ``[x_min, y_min, z_min, x_max, y_max, z_max]`` GT filter at load.
        load_interval: keep every k-th sample of the file.
        max_samples: keep at most this many samples (after ``load_interval``).
        num_frames: 1 (the current key frame) or 2 (also the previous key frame: 12 views,
            ``time_delta``, ``prev_valid``; module docstring). 2 needs info files with ``prev``.
        **kwargs: passed to mmengine's ``BaseDataset`` (``indices``, ``serialize_data``, ``lazy_init``...).
    """

    METAINFO = dict(classes=CLASSES, cameras=CAMERAS, dataset='nuscenes')

    def __init__(self, ann_file: str, data_root: str = '', class_names: Sequence[str] = CLASSES,
                 modality: Optional[Dict] = None, data_prefix: Optional[Dict] = None,
                 pipeline: Sequence = (), test_mode: bool = False, use_valid_flag: bool = False,
                 point_cloud_range: Optional[Sequence[float]] = None, load_interval: int = 1,
                 max_samples: Optional[int] = None, num_frames: int = 1, **kwargs):
        if isinstance(num_frames, bool) or num_frames not in NUM_FRAMES:
            raise ValueError(f'num_frames must be 1 (current key frame) or 2 (also the previous key frame), '
                             f'got {num_frames!r}')
        self.num_frames = int(num_frames)
        self.modality = {**dict(use_camera=True, use_lidar=False), **(modality or {})}
        if not self.modality['use_camera']:
            raise ValueError(f'NuScenesMultiViewDataset is a camera dataset: modality must have use_camera=True, '
                             f'got {self.modality}')
        unknown = [c for c in class_names if c not in CLASSES]
        if unknown or len(set(class_names)) != len(class_names) or not class_names:
            raise ValueError(f'class_names must be distinct nuScenes detection classes out of {CLASSES}, '
                             f'got {tuple(class_names)}')
        if load_interval < 1 or (max_samples is not None and max_samples < 1):
            raise ValueError(f'load_interval and max_samples must be >= 1, got {load_interval}, {max_samples}')
        if point_cloud_range is not None and len(point_cloud_range) != 6:
            raise ValueError(f'point_cloud_range must have 6 values, got {point_cloud_range}')
        self.class_names = tuple(class_names)
        self.use_valid_flag = use_valid_flag
        self.point_cloud_range = None if point_cloud_range is None else [float(v) for v in point_cloud_range]
        self.load_interval = int(load_interval)
        self.max_samples = max_samples
        prefix = dict(DEFAULT_PREFIX, **(data_prefix or {}))
        transforms = [TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline]
        super().__init__(ann_file=ann_file, metainfo=dict(classes=self.class_names), data_root=data_root,
                         data_prefix=prefix, pipeline=transforms, test_mode=test_mode, **kwargs)

    # ------------------------------------------------------------------ loading
    def load_data_list(self) -> List[dict]:
        data = load_nuscenes_infos(self.ann_file)
        meta = data['metainfo']
        for key in ('version', 'dataset', 'info_version'):
            if key in meta:
                self._metainfo.setdefault(key, meta[key])
        index_to_name = {int(i): name for name, i in meta.get('categories', {}).items()}
        if not index_to_name:
            index_to_name = dict(enumerate(CLASSES))
        self._label_map = {i: (self.class_names.index(n) if n in self.class_names else -1)
                           for i, n in index_to_name.items()}
        raw = data['data_list'][::self.load_interval]
        if self.max_samples is not None:
            raw = raw[:self.max_samples]
        if self.num_frames > 1:
            missing = next((i for i, info in enumerate(raw) if 'prev' not in info), None)
            if missing is not None:
                raise ValueError(
                    f'{self.ann_file}: sample {raw[missing]["token"]} has no "prev" key: the info file was written '
                    'before sf3d stored the previous key frame (or by mmdet3d), so num_frames=2 cannot find the '
                    f'previous frame. Regenerate it with\n    {CREATE_COMMAND}\n(your --root-path / --version), '
                    'or use num_frames=1')
        return [self.parse_data_info(info) for info in raw]

    def _path(self, stored: str, prefix_key: str) -> str:
        if osp.isabs(stored):
            return stored
        if osp.basename(stored) != stored:  # a path relative to the dataroot
            return osp.join(self.data_root, stored) if self.data_root else stored
        return osp.join(self.data_prefix.get(prefix_key, ''), stored)

    def parse_data_info(self, info: dict) -> dict:
        """One info-file sample -> the stored (numpy, pickle-friendly) sample; GT selected here."""
        where = f'{self.ann_file} sample {info["token"]}'
        images = self._views(info['images'], where)
        frames = {}
        if self.num_frames == 2:
            prev = info['prev']
            if prev is None:  # first sample of a scene: the current views stand in (PETRv2)
                images.update({prev_view_name(cam): {k: np.copy(v) if isinstance(v, np.ndarray) else v
                                                     for k, v in view.items()} for cam, view in list(images.items())})
                frames = dict(num_frames=2, time_delta=0.0, prev_valid=False)
            else:
                ego_motion = np.asarray(prev['ego_motion'], dtype=np.float64)  # current LiDAR -> previous LiDAR
                for cam, view in self._views(prev['images'], f'{where} prev', ego_motion).items():
                    images[prev_view_name(cam)] = view
                frames = dict(num_frames=2, time_delta=float(info['timestamp']) - float(prev['timestamp']),
                              prev_valid=True)
        out = dict(sample_idx=info.get('sample_idx'), token=info['token'], timestamp=info.get('timestamp'),
                   ego2global=np.asarray(info['ego2global'], dtype=np.float64),
                   lidar2ego=np.asarray(info['lidar_points']['lidar2ego'], dtype=np.float64), images=images)
        if 'scene_token' in info:
            out['scene_token'] = info['scene_token']
        out.update(frames)
        if self.modality['use_lidar']:
            out['lidar_path'] = self._path(info['lidar_points']['lidar_path'], 'pts')
        if not self.test_mode:
            out.update(self._parse_instances(info.get('instances', []), where))
        return out

    def _views(self, stored: Dict[str, dict], where: str, right: Optional[np.ndarray] = None) -> Dict[str, dict]:
        """The 6 cameras of an info ``images`` dict (CAMERAS order), paths resolved per camera;
        ``lidar2cam @ right`` when ``right`` (4, 4) is given."""
        views = {}
        for cam in CAMERAS:
            img = stored[cam]
            lidar2cam = np.asarray(img['lidar2cam'], dtype=np.float64)
            views[cam] = dict(img_path=self._path(img['img_path'], cam),
                              cam2img=_intrinsics(img['cam2img'], f'{where} {cam}'),
                              lidar2cam=lidar2cam if right is None else lidar2cam @ right,
                              sample_data_token=img.get('sample_data_token'), timestamp=img.get('timestamp'))
        return views

    def _parse_instances(self, instances: List[dict], where: str) -> dict:
        n = len(instances)
        boxes = np.asarray([inst['bbox_3d'] for inst in instances], dtype=np.float64).reshape(n, 7)
        velocity = np.asarray([inst.get('velocity', [0.0, 0.0]) for inst in instances],
                              dtype=np.float64).reshape(n, 2)
        labels = np.asarray([self._label_map.get(int(inst['bbox_label_3d']), -1) for inst in instances],
                            dtype=np.int64)
        if self.use_valid_flag:
            keep = np.asarray([bool(inst['bbox_3d_isvalid']) for inst in instances], dtype=bool)
        else:
            keep = np.asarray([inst['num_lidar_pts'] > 0 for inst in instances], dtype=bool)
        keep &= labels >= 0
        if self.point_cloud_range is not None:
            x0, y0, _, x1, y1, _ = self.point_cloud_range
            keep &= (boxes[:, 0] > x0) & (boxes[:, 1] > y0) & (boxes[:, 0] < x1) & (boxes[:, 1] < y1)
        if not np.isfinite(boxes).all():
            raise ValueError(f'{where}: bbox_3d contains NaN or inf')
        return dict(gt_bboxes_info=boxes[keep], gt_velocity=velocity[keep], gt_labels_3d=labels[keep],
                    gt_names_3d=np.asarray([self.class_names[i] for i in labels[keep]], dtype=str).reshape(-1))

    # ------------------------------------------------------------------ access
    def get_data_info(self, idx: int) -> dict:
        """The sample dict of the module docstring (a fresh copy): 6 views, or 12 with ``num_frames=2``."""
        info = super().get_data_info(idx)
        cams = MultiViewCameras(np.stack([c['cam2img'] for c in info['images'].values()]),
                                np.stack([c['lidar2cam'] for c in info['images'].values()]))
        for cam_info, lidar2img in zip(info['images'].values(), cams.lidar2img.numpy()):
            cam_info['lidar2img'] = lidar2img
        if 'gt_bboxes_info' in info:
            info['gt_bboxes_3d'] = from_info_bbox3d(info.pop('gt_bboxes_info'), info.pop('gt_velocity'))
        return info

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(ann_file={getattr(self, "ann_file", None)}, '
                f'{len(self) if getattr(self, "_fully_initialized", False) else "?"} '
                f'samples, classes={getattr(self, "class_names", None)}, test_mode={getattr(self, "test_mode", None)}, '
                f'num_frames={getattr(self, "num_frames", None)})')
