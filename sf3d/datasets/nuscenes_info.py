"""nuScenes info files in the mmdet3d 1.x 'v2' format: written from the devkit tables, read back,
and converted from the 0.17 / 1.0rc era.

One file per split: ``{'metainfo': {'categories': {class: index}, 'dataset': 'nuscenes',
'version', 'info_version': '1.1'}, 'data_list': [sample, ...]}`` with, per sample::

    sample_idx     int, position in the file
    token          sample token;  scene_token (extra)
    timestamp      sample timestamp in s
    ego2global     4x4 (list), ego pose at the LiDAR timestamp
    lidar_points   {'num_pts_feats': 5, 'lidar_path': basename, 'lidar2ego': 4x4}
    images         {CAM: {'img_path': basename, 'cam2img': 3x3, 'sample_data_token', 'timestamp' (s),
                          'cam2ego': 4x4, 'lidar2cam': 4x4}}   for the 6 CAMERAS
    instances      [{'bbox_3d': [x, y, z_gravity, l, w, h, yaw], 'bbox_label_3d', 'bbox_label',
                     'velocity': [vx, vy], 'num_lidar_pts', 'num_radar_pts', 'bbox_3d_isvalid'}]
    prev           (extra, sf3d) the previous key frame of the scene (0.5 s earlier in nuScenes), None
                   for the first sample of a scene: {'token', 'timestamp' (s), 'ego_motion': 4x4
                   current LiDAR frame -> previous LiDAR frame, 'images': the previous sample's own
                   'images' dict (the same object: pickle stores it once; its lidar2cam start from
                   the PREVIOUS LiDAR frame, so current LiDAR -> previous camera = lidar2cam @ ego_motion)}

Geometry: boxes and velocities in the LiDAR frame (l along the heading, yaw from +x towards +y,
z of the box centre, as mmdet3d's files); velocity NaN where the devkit cannot estimate it.
``lidar2cam`` goes LiDAR -> ego (LiDAR time) -> global -> ego (camera time) -> camera: cameras
fire at other moments than the LiDAR. ``instances`` follow ``sample['anns']`` order; labels are
``CLASSES`` indices, -1 for categories outside the detection classes. Paths are basenames below
``samples/<channel>`` (a path relative to the dataroot where a file lives elsewhere). Matrices
are float64 lists. A test split has ``instances == []``. ``ego_motion`` is
``inv(ego2global_prev @ lidar2ego_prev) @ ego2global @ lidar2ego`` (both at the LiDAR timestamps).

Reading: :func:`load_nuscenes_infos` is THE reader; it accepts these files and the ones
mmdet3d's own ``create_data`` writes (float32 lists, extra keys such as ``lidar_sweeps`` or
``cam_instances``), and refuses legacy files, whose boxes use another size/yaw convention,
saying how to convert them (:func:`update_legacy_infos`). ``prev`` is optional when reading (files
of mmdet3d, of sf3d before the key existed, and converted legacy files have none); the dataset
needs it only for two-frame input (``NuScenesMultiViewDataset(num_frames=2)``).
"""
from __future__ import annotations

import json
import math
import os
import os.path as osp
import pickle
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from sf3d.structures import lidar2cam_from_poses, pose_matrix

__all__ = [
    'CLASSES', 'CAMERAS', 'VERSIONS', 'version_splits', 'create_nuscenes_infos', 'load_nuscenes_infos',
    'validate_infos', 'detect_legacy_convention', 'convert_legacy_infos', 'update_legacy_infos',
]

CLASSES = ('car', 'truck', 'trailer', 'bus', 'construction_vehicle', 'bicycle', 'motorcycle',
           'pedestrian', 'traffic_cone', 'barrier')
CAMERAS = ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_BACK_RIGHT')
LIDAR = 'LIDAR_TOP'
VERSIONS = ('v1.0-trainval', 'v1.0-mini', 'v1.0-test')
LEGACY_CONVENTIONS = ('0.17', '1.0')
INFO_VERSION = '1.1'
CREATE_COMMAND = ('python tools/create_data.py nuscenes --root-path data/nuscenes '
                  '--version v1.0-trainval --out-dir data/nuscenes')


def version_splits(version: str) -> Dict[str, str]:
    """File split name -> devkit split name (``nuscenes.utils.splits``) for a version."""
    splits = {'v1.0-trainval': {'train': 'train', 'val': 'val'},
              'v1.0-mini': {'train': 'mini_train', 'val': 'mini_val'},
              'v1.0-test': {'test': 'test'}}
    if version not in splits:
        raise ValueError(f'unknown nuScenes version {version!r}; expected one of {", ".join(VERSIONS)}')
    return splits[version]


# ----------------------------------------------------------------------------- checks before loading

def _check_root(root_path: str, version: str) -> str:
    """The table folder ``root/version``; clear errors for a wrong root or a missing version."""
    version_splits(version)
    if not osp.isdir(root_path):
        raise FileNotFoundError(f'nuScenes root {root_path} not found (expected {root_path}/{version}/*.json, '
                                'maps/ and samples/)')
    if osp.isfile(osp.join(root_path, 'scene.json')):
        name = osp.basename(osp.normpath(root_path))
        raise ValueError(f'{root_path} holds nuScenes tables itself: it is a version folder, not the dataroot. '
                         f'Pass its parent as the root (the folder that contains {name}/, maps/ and samples/)')
    table_root = osp.join(root_path, version)
    if not osp.isfile(osp.join(table_root, 'scene.json')):
        present = sorted(d for d in os.listdir(root_path) if osp.isfile(osp.join(root_path, d, 'scene.json')))
        raise FileNotFoundError(
            f'nuScenes version folder {table_root} not found (or without scene.json); versions present in '
            f'{root_path}: {", ".join(present) if present else "none"}'
            + ('' if present else ' (download nuScenes, or write a synthetic set with '
               'tools/make_synthetic_nuscenes.py --out DIR)'))
    return table_root


def _split_scene_names(table_root: str, version: str) -> Dict[str, List[str]]:
    """File split -> its scene names present in the tables (devkit order), after checking that the
    tables hold this version: no scene outside the version's splits and no split without scenes.
    A split with only some of its scenes (a partial or synthetic set) is allowed."""
    from nuscenes.utils.splits import create_splits_scenes

    with open(osp.join(table_root, 'scene.json')) as f:
        present = {s['name'] for s in json.load(f)}
    all_splits = create_splits_scenes()
    devkit = version_splits(version)
    foreign = sorted(present.difference(*(all_splits[d] for d in devkit.values())))
    if foreign:
        owners = [s for s in ('train', 'val', 'test') if present.intersection(foreign, all_splits[s])]
        raise ValueError(
            f'version/root mismatch: the tables in {table_root} hold {len(foreign)} scene(s) that are not in '
            f'{version} (splits {", ".join(devkit.values())}), e.g. {", ".join(foreign[:3])}'
            + (f', which belong to the devkit split(s) {", ".join(owners)}' if owners else '')
            + f'. Is {table_root} really {version}? Pass the version these tables belong to.')
    out = {}
    for split, name in devkit.items():
        out[split] = [n for n in all_splits[name] if n in present]
        if not out[split]:
            raise ValueError(
                f'split {split!r} ({name}) of {version} has none of its {len(all_splits[name])} scenes in '
                f'{table_root} (missing e.g. {", ".join(all_splits[name][:5])}); the tables are incomplete or '
                'belong to another version')
    return out


# ----------------------------------------------------------------------------- one sample

def _stored_path(filename: str, channel: str) -> str:
    """Basename for files in a ``samples/<channel>`` folder (mmdet3d's data prefix), else ``filename``."""
    parts = str(filename).replace('\\', '/').split('/')
    return parts[-1] if parts[-3:-1] == ['samples', channel] else str(filename)


def _existing_file(nusc, sd_token: str, sample: dict, scene_name: str) -> str:
    path = nusc.get_sample_data_path(sd_token)
    if not osp.isfile(path):
        sd = nusc.get('sample_data', sd_token)
        raise FileNotFoundError(f'{path} not found: sample_data {sd_token} ({sd["channel"]}) of sample '
                                f'{sample["token"]} in {scene_name} references it; is {nusc.dataroot}/'
                                f'{osp.dirname(sd["filename"])} complete?')
    return path


def _matrix(m: np.ndarray) -> List[List[float]]:
    return np.asarray(m, dtype=np.float64).tolist()


def _camera_info(nusc, cam_token: str, lidar2ego: np.ndarray, ego2global: np.ndarray) -> dict:
    sd = nusc.get('sample_data', cam_token)
    calib = nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
    pose = nusc.get('ego_pose', sd['ego_pose_token'])
    cam2img = np.asarray(calib.get('camera_intrinsic') or [], dtype=np.float64)
    if cam2img.shape != (3, 3):
        raise ValueError(f'calibrated_sensor {calib["token"]} of {sd["channel"]} has camera_intrinsic of shape '
                         f'{cam2img.shape}, expected 3x3')
    cam2ego = pose_matrix(calib['translation'], calib['rotation'])
    lidar2cam = lidar2cam_from_poses(lidar2ego, ego2global, pose_matrix(pose['translation'], pose['rotation']),
                                     cam2ego)
    return {'img_path': _stored_path(sd['filename'], sd['channel']), 'cam2img': _matrix(cam2img),
            'sample_data_token': cam_token, 'timestamp': sd['timestamp'] / 1e6,
            'cam2ego': _matrix(cam2ego), 'lidar2cam': _matrix(lidar2cam)}


def _instances(nusc, sample: dict, lidar2ego: np.ndarray, ego2global: np.ndarray) -> List[dict]:
    """Annotations of a sample in the LiDAR frame, via the devkit (``get_sample_data`` of the LiDAR:
    global -> ego at the LiDAR time -> LiDAR). Velocity: ``box_velocity`` (global, its z dropped as
    in mmdet3d) rotated into the LiDAR frame."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    _, boxes, _ = nusc.get_sample_data(sample['data'][LIDAR], selected_anntokens=sample['anns'])
    global2lidar_rot = lidar2ego[:3, :3].T @ ego2global[:3, :3].T
    out = []
    for ann_token, box in zip(sample['anns'], boxes):
        ann = nusc.get('sample_annotation', ann_token)
        rot = box.rotation_matrix
        w, l, h = (float(v) for v in box.wlh)
        vel = nusc.box_velocity(ann_token)
        vel = global2lidar_rot @ np.array([vel[0], vel[1], 0.0])
        name = category_to_detection_name(ann['category_name'])
        label = CLASSES.index(name) if name in CLASSES else -1
        n_lidar, n_radar = int(ann['num_lidar_pts']), int(ann['num_radar_pts'])
        out.append({'bbox_3d': [*(float(v) for v in box.center), l, w, h, math.atan2(rot[1, 0], rot[0, 0])],
                    'bbox_label_3d': label, 'bbox_label': label,
                    'velocity': [float(vel[0]), float(vel[1])],
                    'num_lidar_pts': n_lidar, 'num_radar_pts': n_radar,
                    'bbox_3d_isvalid': (n_lidar + n_radar) > 0})
    return out


def _sample_info(nusc, sample: dict, index: int, scene_name: str, annotated: bool) -> dict:
    missing = [ch for ch in (LIDAR,) + CAMERAS if ch not in sample['data']]
    if missing:
        raise ValueError(f'sample {sample["token"]} in {scene_name} has no sample_data for {", ".join(missing)}')
    lidar_token = sample['data'][LIDAR]
    lidar_sd = nusc.get('sample_data', lidar_token)
    calib = nusc.get('calibrated_sensor', lidar_sd['calibrated_sensor_token'])
    pose = nusc.get('ego_pose', lidar_sd['ego_pose_token'])
    lidar2ego = pose_matrix(calib['translation'], calib['rotation'])
    ego2global = pose_matrix(pose['translation'], pose['rotation'])
    for token in [lidar_token] + [sample['data'][cam] for cam in CAMERAS]:
        _existing_file(nusc, token, sample, scene_name)
    return {
        'sample_idx': index,
        'token': sample['token'],
        'timestamp': sample['timestamp'] / 1e6,
        'ego2global': _matrix(ego2global),
        'lidar_points': {'num_pts_feats': 5, 'lidar_path': _stored_path(lidar_sd['filename'], LIDAR),
                         'lidar2ego': _matrix(lidar2ego)},
        'images': {cam: _camera_info(nusc, sample['data'][cam], lidar2ego, ego2global) for cam in CAMERAS},
        'instances': _instances(nusc, sample, lidar2ego, ego2global) if annotated else [],
        'scene_token': sample['scene_token'],
    }


def _prev_info(info: dict, prev: Optional[dict], sample: dict, scene_name: str) -> Optional[dict]:
    """The ``prev`` entry of ``info`` (module docstring) from the scene's previous info, or None for
    the first sample of a scene. ``prev`` must be the info of ``sample['prev']``."""
    if not sample['prev']:
        return None
    if prev is None or prev['token'] != sample['prev']:
        raise ValueError(f'sample {sample["token"]} in {scene_name} has prev {sample["prev"]}, but the sample '
                         'written before it in the scene is '
                         + (prev['token'] if prev is not None else 'none') + '; the sample table is inconsistent')
    lidar2global = np.asarray(info['ego2global']) @ np.asarray(info['lidar_points']['lidar2ego'])
    prev2global = np.asarray(prev['ego2global']) @ np.asarray(prev['lidar_points']['lidar2ego'])
    return {'token': prev['token'], 'timestamp': prev['timestamp'],
            'ego_motion': _matrix(np.linalg.inv(prev2global) @ lidar2global),
            'images': prev['images']}  # the same object: stored once by pickle


def _metainfo(version: str) -> dict:
    return {'categories': {name: i for i, name in enumerate(CLASSES)}, 'dataset': 'nuscenes',
            'version': version, 'info_version': INFO_VERSION}


def _dump(data: dict, path: str) -> None:
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'wb') as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- create

def create_nuscenes_infos(root_path: str, version: str, out_dir: str, *, extra_tag: str = 'nuscenes',
                          progress: bool = True) -> List[str]:
    """Write ``{extra_tag}_infos_{split}.pkl`` for every split of ``version`` into ``out_dir``.

    Splits come from ``nuscenes.utils.splits.create_splits_scenes()``: v1.0-trainval -> train/val,
    v1.0-mini -> mini_train/mini_val (files still named ``_train``/``_val``), v1.0-test -> test
    (no annotations: ``instances == []``). Samples follow the split's scene order and, within a
    scene, time (``sample['next']``), each linked to the scene's previous one by ``prev``
    (module docstring); nothing is written unless every split succeeds. Returns the written paths.
    Raises FileNotFoundError for a missing root, version folder or data file, ValueError for
    tables that do not match ``version``.
    """
    from nuscenes import NuScenes
    from nuscenes.utils.splits import create_splits_scenes
    from tqdm import tqdm

    table_root = _check_root(root_path, version)
    split_scenes = _split_scene_names(table_root, version)
    nusc = NuScenes(version=version, dataroot=root_path, verbose=False)
    scene_by_name = {s['name']: s for s in nusc.scene}
    annotated = version != 'v1.0-test'
    total = sum(scene_by_name[n]['nbr_samples'] for names in split_scenes.values() for n in names)
    results = {}
    with tqdm(total=total, desc=f'{version} infos', unit='sample', disable=not progress) as bar:
        for split, names in split_scenes.items():
            data_list = []
            for name in names:
                token, prev = scene_by_name[name]['first_sample_token'], None
                while token:
                    sample = nusc.get('sample', token)
                    info = _sample_info(nusc, sample, len(data_list), name, annotated)
                    info['prev'] = _prev_info(info, prev, sample, name)
                    data_list.append(info)
                    prev = info
                    token = sample['next']
                    bar.update(1)
            results[split] = validate_infos({'metainfo': _metainfo(version), 'data_list': data_list},
                                            f'<{split} infos>')
    os.makedirs(out_dir, exist_ok=True)  # written only once every split succeeded
    paths = []
    for split, data in results.items():
        path = osp.join(out_dir, f'{extra_tag}_infos_{split}.pkl')
        _dump(data, path)
        paths.append(path)
        if progress:
            expected = len(create_splits_scenes()[version_splits(version)[split]])
            scenes = len(split_scenes[split])
            print(f'{split}: {len(data["data_list"])} samples from {scenes} scenes'
                  + (f' (only {scenes} of the {expected} scenes of the split are in the tables)'
                     if scenes < expected else '') + f' -> {path}')
    return paths


# ----------------------------------------------------------------------------- read / validate

def _shape(x):
    """Shape of a nested list / tuple / ndarray matrix (no copy), or None."""
    if isinstance(x, np.ndarray):
        return x.shape
    if isinstance(x, (list, tuple)) and x and all(isinstance(r, (list, tuple, np.ndarray)) for r in x):
        widths = {len(r) for r in x}
        return (len(x), widths.pop()) if len(widths) == 1 else None
    return None


def _is_real(x) -> bool:
    """A finite real number (numpy scalars included, bools excluded)."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_)) \
        and math.isfinite(x)


def _legacy_message(path: str) -> str:
    return (f'{path} is a legacy nuScenes info file (mmdet3d 0.17 / 1.0rc era: a dict with an "infos" key). '
            'Its boxes use another yaw/size convention ([x, y, z, w, l, h, -yaw - pi/2] in 0.17), so sf3d does '
            f'not load it. Convert it with\n    python tools/create_data.py nuscenes --update-infos {path}\n'
            f'or regenerate the info files from the dataset with\n    {CREATE_COMMAND}')


def validate_infos(data, source: str) -> dict:
    """Check a loaded info dict; returns ``{'metainfo', 'data_list'}`` (same objects, unchanged).

    ``source`` names the file in error messages. Raises ValueError naming the file, the sample
    index and the key for anything a reader relies on (see the module docstring); extra keys are
    ignored, so files written by mmdet3d's ``create_data`` pass unchanged.
    """
    if isinstance(data, dict) and 'infos' in data and 'data_list' not in data:
        raise ValueError(_legacy_message(source))
    if not isinstance(data, dict):
        raise ValueError(f'{source}: expected a dict with keys "metainfo" and "data_list" (mmdet3d 1.x v2 info '
                         f'format), got {type(data).__name__}')
    for key in ('metainfo', 'data_list'):
        if key not in data:
            raise ValueError(f'{source}: missing top-level key {key!r} (found {sorted(data)}); expected the mmdet3d '
                             f'1.x v2 info format. Regenerate it with\n    {CREATE_COMMAND}')
    meta, data_list = data['metainfo'], data['data_list']
    if not isinstance(meta, dict):
        raise ValueError(f'{source}: "metainfo" must be a dict, got {type(meta).__name__}')
    if not isinstance(data_list, list):
        raise ValueError(f'{source}: "data_list" must be a list, got {type(data_list).__name__}')
    if meta.get('dataset', 'nuscenes') != 'nuscenes':
        raise ValueError(f'{source}: metainfo.dataset is {meta["dataset"]!r}, expected "nuscenes"')
    categories = meta.get('categories', {})
    if 'classes' in meta:
        categories = {**{c: i for i, c in enumerate(meta['classes'])}, **categories}
    wrong = {c: i for c, i in categories.items() if c in CLASSES and i != CLASSES.index(c)}
    if wrong:
        raise ValueError(f'{source}: metainfo class indices {wrong} differ from sf3d\'s class order {CLASSES}; '
                         'labels in this file would be misread')
    for i, info in enumerate(data_list):
        _validate_sample(info, i, source)
    return {'metainfo': meta, 'data_list': data_list}


def _validate_sample(info, i: int, source: str) -> None:
    def fail(key: str, what: str):
        token = info.get('token') if isinstance(info, dict) else None
        raise ValueError(f'{source}: data_list[{i}]' + (f' (token {token})' if token else '') + f': {key} {what}')

    def matrix(value, key: str, shapes) -> None:
        shape = _shape(value)
        if shape not in shapes:
            fail(key, f'must be a {" or ".join("x".join(map(str, s)) for s in shapes)} matrix, got '
                      + (f'shape {shape}' if shape else repr(value)[:80]))

    if not isinstance(info, dict):
        fail('sample', f'must be a dict, got {type(info).__name__}')
    for key in ('token', 'images', 'lidar_points', 'ego2global'):
        if key not in info:
            fail(f'key {key!r}', f'is missing (sample keys: {sorted(info)})')
    if not isinstance(info['token'], str) or not info['token']:
        fail("'token'", f'must be a non-empty string, got {info["token"]!r}')
    matrix(info['ego2global'], "'ego2global'", [(4, 4)])
    lidar = info['lidar_points']
    if not isinstance(lidar, dict) or 'lidar2ego' not in lidar:
        fail("'lidar_points.lidar2ego'", 'is missing')
    matrix(lidar['lidar2ego'], "'lidar_points.lidar2ego'", [(4, 4)])
    def cameras(images, where: str) -> None:
        if not isinstance(images, dict):
            fail(f"'{where}'", f'must be a dict of the 6 cameras, got {type(images).__name__}')
        for cam in CAMERAS:
            if cam not in images:
                fail(f"'{where}.{cam}'",
                     f'is missing (expected the cameras {", ".join(CAMERAS)}; got {sorted(images)})')
            img = images[cam]
            for key in ('img_path', 'cam2img', 'lidar2cam'):
                if not isinstance(img, dict) or key not in img:
                    fail(f"'{where}.{cam}.{key}'", 'is missing')
            if not isinstance(img['img_path'], str) or not img['img_path']:
                fail(f"'{where}.{cam}.img_path'", f'must be a non-empty string, got {img["img_path"]!r}')
            matrix(img['cam2img'], f"'{where}.{cam}.cam2img'", [(3, 3), (3, 4), (4, 4)])
            matrix(img['lidar2cam'], f"'{where}.{cam}.lidar2cam'", [(4, 4)])

    cameras(info['images'], 'images')
    prev = info.get('prev')
    if prev is not None:  # optional (module docstring); None for the first sample of a scene
        if not isinstance(prev, dict):
            fail("'prev'", f'must be None or a dict with token, timestamp, ego_motion and images, '
                           f'got {type(prev).__name__}')
        for key in ('token', 'timestamp', 'ego_motion', 'images'):
            if key not in prev:
                fail(f"'prev.{key}'", f'is missing (prev keys: {sorted(prev)})')
        if not _is_real(prev['timestamp']):
            fail("'prev.timestamp'", f'must be a finite number (seconds), got {prev["timestamp"]!r}')
        matrix(prev['ego_motion'], "'prev.ego_motion'", [(4, 4)])
        cameras(prev['images'], 'prev.images')
    instances = info.get('instances', [])
    if not isinstance(instances, list):
        fail("'instances'", f'must be a list, got {type(instances).__name__}')
    for j, inst in enumerate(instances):
        if not isinstance(inst, dict) or 'bbox_3d' not in inst or 'bbox_label_3d' not in inst:
            fail(f"'instances[{j}]'", 'must be a dict with keys bbox_3d and bbox_label_3d, got '
                 + (f'keys {sorted(inst)}' if isinstance(inst, dict) else type(inst).__name__))
        box = inst['bbox_3d']
        if not isinstance(box, (list, tuple, np.ndarray)) or len(box) != 7:
            fail(f"'instances[{j}].bbox_3d'", f'must have 7 values [x, y, z_gravity, l, w, h, yaw], got {box!r}')


def load_nuscenes_infos(path: str) -> dict:
    """Load and validate a nuScenes info file (mmdet3d 1.x v2 format, as written by
    :func:`create_nuscenes_infos` or by mmdet3d's ``create_data``).

    Returns ``{'metainfo': dict, 'data_list': list of per-sample dicts}`` (module docstring) exactly
    as stored. Raises FileNotFoundError naming the file and the command that creates it, and
    ValueError for a legacy ('infos') file (with the command that converts it) or a malformed one.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'nuScenes info file {path} not found; create the info files with\n    '
                                f'{CREATE_COMMAND}\n(or convert an old one with '
                                'python tools/create_data.py nuscenes --update-infos OLD.pkl)')
    with open(path, 'rb') as f:
        data = pickle.load(f)
    return validate_infos(data, str(path))


# ----------------------------------------------------------------------------- legacy files

def _load_legacy(path: str) -> dict:
    if not osp.isfile(path):
        raise FileNotFoundError(f'legacy info file {path} not found')
    with open(path, 'rb') as f:
        old = pickle.load(f)
    if isinstance(old, dict) and 'data_list' in old:
        raise ValueError(f'{path} is already in the v2 format (metainfo + data_list); nothing to convert')
    if not (isinstance(old, dict) and isinstance(old.get('infos'), list)):
        raise ValueError(f'{path}: expected a legacy info file, a dict with an "infos" list (and "metadata"), got '
                         + (f'keys {sorted(old)}' if isinstance(old, dict) else type(old).__name__))
    return old


def detect_legacy_convention(infos: Sequence[dict], source: str = '<infos>') -> str:
    """'0.17' (``gt_boxes`` = [x, y, z, w, l, h, -yaw - pi/2]) or '1.0' ([x, y, z, l, w, h, yaw]).

    Cars are longer than wide: the median of dims[:, 0] / dims[:, 1] over 'car' boxes is < 1 in
    the 0.17 order. Raises ValueError when the file has no cars or the median is near 1.
    """
    ratios = []
    for info in infos:
        if 'gt_boxes' not in info:
            continue
        boxes = np.asarray(info['gt_boxes'], dtype=np.float64).reshape(-1, 7)
        cars = np.asarray(info.get('gt_names', [])) == 'car'
        if cars.shape != (len(boxes),):
            raise ValueError(f'{source}: a sample has {len(boxes)} gt_boxes but gt_names of shape {cars.shape}')
        ratios.append(boxes[cars, 3] / boxes[cars, 4])
    ratios = np.concatenate(ratios) if ratios else np.zeros(0)
    hint = ('pass the convention explicitly: --legacy-convention 0.17 (gt_boxes = [x, y, z, w, l, h, -yaw - pi/2], '
            'mmdet3d < 1.0) or --legacy-convention 1.0 ([x, y, z, l, w, h, yaw], mmdet3d 1.0rc)')
    if ratios.size == 0:
        raise ValueError(f'{source}: cannot tell the box convention of this legacy file: it has no car boxes; {hint}')
    median = float(np.median(ratios))
    if 0.8 <= median <= 1.25:
        raise ValueError(f'{source}: cannot tell the box convention of this legacy file: the median size ratio '
                         f'dims[0] / dims[1] of its {ratios.size} car boxes is {median:.2f}; {hint}')
    return '0.17' if median < 1 else '1.0'


def _legacy_sample(info: dict, index: int, convention: str, source: str) -> dict:
    def need(d: dict, key: str, where: str = ''):
        if key not in d:
            raise ValueError(f'{source}: infos[{index}]{where} is missing key {key!r} (found {sorted(d)})')
        return d[key]

    cams = need(info, 'cams')
    images = {}
    for cam in CAMERAS:
        c = need(cams, cam, '.cams')
        where = f'.cams.{cam}'
        sensor2lidar = np.eye(4)
        sensor2lidar[:3, :3] = np.asarray(need(c, 'sensor2lidar_rotation', where), dtype=np.float64)
        sensor2lidar[:3, 3] = np.asarray(need(c, 'sensor2lidar_translation', where), dtype=np.float64).reshape(3)
        images[cam] = {'img_path': _stored_path(need(c, 'data_path', where), cam),
                       'cam2img': _matrix(need(c, 'cam_intrinsic', where)),
                       'sample_data_token': need(c, 'sample_data_token', where),
                       'timestamp': need(c, 'timestamp', where) / 1e6}
        if 'sensor2ego_translation' in c and 'sensor2ego_rotation' in c:
            images[cam]['cam2ego'] = _matrix(pose_matrix(c['sensor2ego_translation'], c['sensor2ego_rotation']))
        images[cam]['lidar2cam'] = _matrix(np.linalg.inv(sensor2lidar))

    instances = []
    if 'gt_boxes' in info:
        boxes = np.asarray(info['gt_boxes'], dtype=np.float64).reshape(-1, 7)
        names = list(need(info, 'gt_names'))
        vels = np.asarray(need(info, 'gt_velocity'), dtype=np.float64).reshape(-1, 2)
        n_lidar, n_radar = need(info, 'num_lidar_pts'), need(info, 'num_radar_pts')
        valid = info['valid_flag'] if 'valid_flag' in info else np.asarray(n_lidar) + np.asarray(n_radar) > 0
        lengths = {len(boxes), len(names), len(vels), len(n_lidar), len(n_radar), len(valid)}
        if len(lengths) != 1:
            raise ValueError(f'{source}: infos[{index}]: gt_boxes, gt_names, gt_velocity, num_lidar_pts, '
                             f'num_radar_pts and valid_flag differ in length ({sorted(lengths)})')
        if convention == '0.17':
            boxes = np.concatenate([boxes[:, :3], boxes[:, [4, 3, 5]], -boxes[:, 6:7] - np.pi / 2], axis=1)
        boxes[:, 6] = np.arctan2(np.sin(boxes[:, 6]), np.cos(boxes[:, 6]))
        for j, box in enumerate(boxes):
            label = CLASSES.index(names[j]) if names[j] in CLASSES else -1
            instances.append({'bbox_3d': box.tolist(), 'bbox_label_3d': label, 'bbox_label': label,
                              'velocity': vels[j].tolist(), 'num_lidar_pts': int(n_lidar[j]),
                              'num_radar_pts': int(n_radar[j]), 'bbox_3d_isvalid': bool(valid[j])})
    return {
        'sample_idx': index,
        'token': need(info, 'token'),
        'timestamp': need(info, 'timestamp') / 1e6,
        'ego2global': _matrix(pose_matrix(need(info, 'ego2global_translation'), need(info, 'ego2global_rotation'))),
        'lidar_points': {'num_pts_feats': int(info.get('num_features', 5)),
                         'lidar_path': _stored_path(need(info, 'lidar_path'), LIDAR),
                         'lidar2ego': _matrix(pose_matrix(need(info, 'lidar2ego_translation'),
                                                          need(info, 'lidar2ego_rotation')))},
        'images': images,
        'instances': instances,
    }


def convert_legacy_infos(old: dict, convention: Optional[str] = None, source: str = '<infos>') -> dict:
    """A legacy ``{'infos': [...], 'metadata': {'version'}}`` dict -> the v2 dict.

    ``convention``: '0.17', '1.0' or None (detected, :func:`detect_legacy_convention`).
    ``lidar2cam = inv(sensor2lidar)`` (legacy files already went through both ego poses).
    """
    if convention is None:
        convention = detect_legacy_convention(old['infos'], source)
    if convention not in LEGACY_CONVENTIONS:
        raise ValueError(f'legacy convention must be one of {LEGACY_CONVENTIONS}, got {convention!r}')
    version = (old.get('metadata') or {}).get('version', 'unknown')
    data_list = [_legacy_sample(info, i, convention, source) for i, info in enumerate(old['infos'])]
    return validate_infos({'metainfo': _metainfo(version), 'data_list': data_list}, source)


def update_legacy_infos(old_path: str, out_path: Optional[str] = None, *, convention: Optional[str] = None,
                        progress: bool = True) -> str:
    """Convert a 0.17 / 1.0rc-era info file to the v2 format; returns the written path.

    ``out_path`` defaults to ``<old stem>_v2.pkl`` next to the input; the input is never
    overwritten. ``convention`` as in :func:`convert_legacy_infos`.
    """
    old_path = str(old_path)
    if out_path is None:
        stem = old_path[:-4] if old_path.endswith('.pkl') else old_path
        out_path = f'{stem}_v2.pkl'
    out_path = str(out_path)
    if osp.abspath(out_path) == osp.abspath(old_path) or (osp.exists(out_path) and osp.samefile(out_path, old_path)):
        raise ValueError(f'refusing to overwrite the input {old_path}; choose another output path')
    start = time.time()
    old = _load_legacy(old_path)
    convention = convention or detect_legacy_convention(old['infos'], old_path)
    data = convert_legacy_infos(old, convention, old_path)
    os.makedirs(osp.dirname(osp.abspath(out_path)), exist_ok=True)
    _dump(data, out_path)
    if progress:
        print(f'converted {len(data["data_list"])} samples of {old_path} (box convention {convention}) to '
              f'{out_path} in {time.time() - start:.1f} s')
    return out_path
