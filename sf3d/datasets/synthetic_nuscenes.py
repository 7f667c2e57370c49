"""Synthetic nuScenes: a small dataset in the real nuScenes v1.0 table format.

The unchanged nuscenes-devkit loads, renders and evaluates what this module writes:
``<out>/<version>/*.json`` (the 13 tables), ``<out>/maps/*.png``,
``<out>/samples/CAM_*/*.jpg`` and ``<out>/samples/LIDAR_TOP/*.pcd.bin``.

What is simulated
-----------------
* Scenes carry the real scene names (``v1.0-mini``: the devkit's ``mini_train`` + ``mini_val``;
  ``v1.0-test``: the first :data:`NUM_TEST_SCENES` names of ``splits.test``, without annotations,
  like the real test set), so the devkit's hard-coded splits apply unchanged.
* Ego: drives the centre lane of a road of constant curvature (straight or a radius >= 50 m), at
  a speed that changes linearly between two values in [0, 12] m/s.  Key frames every 0.5 s; the
  LiDAR fires at the sample timestamp, each camera at its own offset (:data:`CAMERA_OFFSETS_US`,
  2-39 ms, +-1 ms jitter), and every sensor reading has its own ``ego_pose`` at its own time.
* Rig: the real nuScenes calibrations (log n015, 1600x900) of the six cameras and LIDAR_TOP;
  ``image_scale`` scales the image and the stored intrinsics, :class:`RigSpec` changes focal
  length, camera height, pitch (positive pitch = cameras look down) and roll about each camera's
  optical axis (positive roll = image content turns clockwise, as ``camera_delta``'s roll);
  all is written into ``calibrated_sensor``, so a different rig is a correctly calibrated different
  rig.  With ``rig_ranges`` (``--rig-ranges``) every scene draws its own rig uniformly within the
  ranges (:func:`scene_rig`, from seed, version and scene name only); the six cameras of a scene
  share the draw, the LiDAR never changes.  Every scene has its own ``calibrated_sensor`` records
  (tokens from the scene name), so per-scene rigs are plain nuScenes.  ``<out>/rig.json`` records
  the rig (:func:`read_rig`) or, for a multi-rig root, the ranges and every scene's rig
  (:func:`read_scene_rigs`; ``read_rig`` refuses such a root).
* Objects: every detection class in every scene (mini_val alone holds all ten), plausible sizes,
  15-40 objects within 45 m of the ego per sample, never overlapping each other or the ego at any
  time of the scene.  Road users follow their lane (constant speed and yaw rate), pedestrians and
  construction vehicles walk/drive straight, the rest is static.  Attributes follow class and
  motion (:data:`RULE_ATTRIBUTES`).  Every object is annotated in every sample of its scene (prev/next 0.5 s apart).
* Images: per-pixel ray casting (numpy): a textured ground plane (asphalt, dashed lane marks,
  sidewalk tiles, terrain noise) with distance haze, a sky gradient, and each object as a solid
  cuboid in its class colour (:data:`CLASS_COLOURS`, ten distinct hues), each face shaded by its
  normal.  A per-pixel depth test gives exact occlusion and near-plane handling.  A camera is
  rendered from the ego pose at its own timestamp with objects at the sample (annotation) time,
  exactly what the devkit's ``get_sample_data`` assumes for key frames.
* LiDAR: a 32-ring scanner (HDL-32E elevations, :data:`LIDAR_AZIMUTHS` steps) ray cast against the
  ground and the boxes, stored as float32 ``x, y, z, intensity, ring`` in the LIDAR_TOP frame.
  Hits on a box are pulled 2 cm inside it and ground hits within 5 cm of a footprint are dropped,
  so ``num_lidar_pts`` equals the devkit's ``points_in_box`` count; a box that no ray reaches gets
  up to three points just inside its face nearest to the sensor, so every box has >= 1 point.
* Visibility: fraction of an object's pixels that are unoccluded, summed over the six cameras of
  the NOMINAL rig at scale 0.25 (so annotations do not depend on ``--rig``/``--image-scale``);
  binned into the nuScenes levels v0-40 / v40-60 / v60-80 / v80-100.

Determinism: every token and all scene content are functions of (seed, version, scene name,
index) only; the rig, rig ranges and image scale change images and ``calibrated_sensor`` values,
never a token or an annotation.  The same arguments give byte-identical files.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import os.path as osp
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from pyquaternion import Quaternion

from sf3d.datasets.nuscenes_info import CAMERAS, CLASSES

__all__ = [
    'CLASSES', 'CAMERAS', 'VERSIONS', 'CLASS_CATEGORY', 'CLASS_COLOURS', 'CLASS_SIZES_WLH',
    'RigSpec', 'RIG_KEYS', 'parse_rig', 'parse_rig_ranges', 'check_rig_ranges', 'format_rig_ranges', 'scene_rig',
    'read_rig', 'read_scene_rigs', 'is_multi_rig', 'RIG_FILE', 'build_calibration', 'scene_names', 'plan_scene',
    'ScenePlan', 'make_token', 'generate', 'save_preview',
]

LIDAR = 'LIDAR_TOP'
VERSIONS = ('v1.0-mini', 'v1.0-test')
NUM_TEST_SCENES = 4
TABLES = ('category', 'attribute', 'visibility', 'instance', 'sensor', 'calibrated_sensor',
          'ego_pose', 'log', 'scene', 'sample', 'sample_data', 'sample_annotation', 'map')

# nuScenes category (a name the devkit maps to the detection class) and mean size (w, l, h),
# the latter from the nuScenes training-set statistics used by mmdet3d's anchors.
CLASS_CATEGORY = {
    'car': 'vehicle.car', 'truck': 'vehicle.truck', 'trailer': 'vehicle.trailer',
    'bus': 'vehicle.bus.rigid', 'construction_vehicle': 'vehicle.construction',
    'bicycle': 'vehicle.bicycle', 'motorcycle': 'vehicle.motorcycle',
    'pedestrian': 'human.pedestrian.adult', 'traffic_cone': 'movable_object.trafficcone',
    'barrier': 'movable_object.barrier',
}
CLASS_SIZES_WLH = {
    'car': (1.95, 4.61, 1.72), 'truck': (2.46, 6.74, 2.73), 'trailer': (2.87, 12.01, 3.82),
    'bus': (2.94, 11.19, 3.47), 'construction_vehicle': (2.73, 6.38, 3.13),
    'bicycle': (0.60, 1.68, 1.27), 'motorcycle': (0.76, 2.10, 1.44),
    'pedestrian': (0.66, 0.73, 1.76), 'traffic_cone': (0.40, 0.40, 1.06),
    'barrier': (2.49, 0.49, 0.98),
}


def _hsv(hue_deg: float, sat: float = 0.85, val: float = 0.95) -> Tuple[int, int, int]:
    """RGB (0-255) of a fully lit face with the given hue."""
    h = (hue_deg % 360.0) / 60.0
    c = val * sat
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return tuple(int(round(255 * (v + val - c))) for v in rgb)


# Ten hues at least 30 degrees apart; car/truck/trailer/bus/construction_vehicle are far apart.
CLASS_COLOURS = {
    'car': _hsv(0), 'truck': _hsv(220), 'trailer': _hsv(55), 'bus': _hsv(125),
    'construction_vehicle': _hsv(25, 1.0, 1.0), 'bicycle': _hsv(300), 'motorcycle': _hsv(185),
    'pedestrian': _hsv(265), 'traffic_cone': _hsv(90), 'barrier': _hsv(335, 0.6, 1.0),
}

# The 23 categories of nuScenes v1.0 (index as in nuScenes-lidarseg's category.json).
ALL_CATEGORIES = (
    'animal', 'human.pedestrian.adult', 'human.pedestrian.child',
    'human.pedestrian.construction_worker', 'human.pedestrian.personal_mobility',
    'human.pedestrian.police_officer', 'human.pedestrian.stroller', 'human.pedestrian.wheelchair',
    'movable_object.barrier', 'movable_object.debris', 'movable_object.pushable_pullable',
    'movable_object.trafficcone', 'static_object.bicycle_rack', 'vehicle.bicycle',
    'vehicle.bus.bendy', 'vehicle.bus.rigid', 'vehicle.car', 'vehicle.construction',
    'vehicle.emergency.ambulance', 'vehicle.emergency.police', 'vehicle.motorcycle',
    'vehicle.trailer', 'vehicle.truck',
)
ATTRIBUTES = ('vehicle.moving', 'vehicle.stopped', 'vehicle.parked', 'cycle.with_rider',
              'cycle.without_rider', 'pedestrian.sitting_lying_down', 'pedestrian.standing',
              'pedestrian.moving')
VISIBILITY_LEVELS = (('1', 'v0-40', 0.0), ('2', 'v40-60', 0.4), ('3', 'v60-80', 0.6),
                     ('4', 'v80-100', 0.8))

# Real nuScenes calibration (log n015, 1600x900): translation (m, ego frame), rotation
# (w, x, y, z, sensor -> ego), and (f, cx, cy) in pixels with fx = fy = f.
NUSCENES_RIG = {
    'CAM_FRONT': ((1.70079118954, 0.0159456324149, 1.51095763913),
                  (0.4998015430569128, -0.5030316162024876, 0.4997798114386805, -0.49737083824542755),
                  (1266.417203046554, 816.2670197447984, 491.50706579294757)),
    'CAM_FRONT_RIGHT': ((1.5508477543, -0.493404796419, 1.49574800619),
                        (0.2060347966337182, -0.2026940577919598, 0.6824507824531167,
                         -0.6713610884174485),
                        (1260.8474446004698, 807.968244525554, 495.3344268742088)),
    'CAM_FRONT_LEFT': ((1.52387798135, 0.494631336551, 1.50932822144),
                       (0.6757265034669446, -0.6736266522251881, 0.21214015046209478,
                        -0.21122827103904068),
                       (1272.5979470598488, 826.6154927353808, 479.75165386361925)),
    'CAM_BACK': ((0.0283260309358, 0.00345136761476, 1.57910346144),
                 (0.5037872666382278, -0.49740249788611096, -0.4941850223835201, 0.5045496097725578),
                 (809.2209905677063, 829.2196003259838, 481.77842384512485)),
    'CAM_BACK_LEFT': ((1.03569100218, 0.484795032713, 1.59097014818),
                      (0.6924185592174665, -0.7031619420114925, -0.11648342771943819,
                       0.11203317912370753),
                      (1256.7414812095406, 792.1125740759628, 492.7757465151356)),
    'CAM_BACK_RIGHT': ((1.0148780988, -0.480568219723, 1.56239545128),
                       (0.12280980120078765, -0.132400842670559, -0.7004305821388234,
                        0.690496031265798),
                       (1259.5137405846733, 807.2529053838625, 501.19579884916527)),
    'LIDAR_TOP': ((0.943713, 0.0, 1.84023),
                  (0.7077955119163518, -0.006492242056004365, 0.010646214713995808,
                   -0.7063073142877817),
                  None),
}
FULL_WIDTH, FULL_HEIGHT = 1600, 900

SAMPLE_PERIOD_US = 500_000
CAMERA_OFFSETS_US = {'CAM_FRONT_LEFT': 2_000, 'CAM_FRONT': 10_000, 'CAM_FRONT_RIGHT': 17_000,
                     'CAM_BACK_RIGHT': 25_000, 'CAM_BACK': 32_000, 'CAM_BACK_LEFT': 39_000}
CAMERA_JITTER_US = 1_000
LIDAR_ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)
LIDAR_AZIMUTHS = 720
LIDAR_RANGE = 70.0
NEAR_PLANE = 0.1
VISIBILITY_SCALE = 0.25
JPEG_QUALITY = 90

# Scene layout (metres, lateral d > 0 is left of the ego's path).
LANE_CENTRES = (-7.0, -3.5, 0.0, 3.5, 7.0)
LANE_MARKS = (-5.25, -1.75, 1.75, 5.25)
ROAD_EDGE = 8.75
SIDEWALK_EDGE = 12.75
ANNOTATION_RADIUS = 45.0
OBJECTS_PER_SAMPLE = (15, 40)
EGO_FOOTPRINT = (-1.0, 3.6, 1.0)  # rear x, front x, half width in the ego frame
OBJECT_GAP = 0.3
EGO_GAP = 1.0
SAMPLES_PER_SCENE_RANGE = (2, 40)
SCENE_DESCRIPTION = 'Synthetic scene (sf3d)'

# Attribute (static, moving) per class: the class-and-speed rule by which camera detectors
# (mmdet3d, sf3d.evaluation.NuScenesMetric) assign attributes, so that ground truth fed through
# the metric scores NDS 1.0. Real nuScenes draws e.g. parked vs stopped freely; here it is fixed.
RULE_ATTRIBUTES = {
    'car': ('vehicle.parked', 'vehicle.moving'), 'truck': ('vehicle.parked', 'vehicle.moving'),
    'trailer': ('vehicle.parked', 'vehicle.moving'), 'bus': ('vehicle.stopped', 'vehicle.moving'),
    'construction_vehicle': ('vehicle.parked', 'vehicle.moving'),
    'bicycle': ('cycle.without_rider', 'cycle.with_rider'), 'motorcycle': ('cycle.without_rider', 'cycle.with_rider'),
    'pedestrian': ('pedestrian.standing', 'pedestrian.moving'), 'traffic_cone': ('', ''), 'barrier': ('', ''),
}

# Per class: probability of moving, speed range (m/s), LiDAR intensity.
MOTION = {
    'car': (0.5, (2.0, 12.0)), 'truck': (0.4, (2.0, 10.0)), 'trailer': (0.25, (2.0, 8.0)),
    'bus': (0.5, (2.0, 9.0)), 'construction_vehicle': (0.25, (1.0, 3.0)),
    'bicycle': (0.6, (2.0, 6.0)), 'motorcycle': (0.6, (3.0, 12.0)),
    'pedestrian': (0.7, (0.6, 1.8)), 'traffic_cone': (0.0, (0.0, 0.0)),
    'barrier': (0.0, (0.0, 0.0)),
}
CLASS_FREQUENCY = {'car': 0.30, 'truck': 0.08, 'trailer': 0.04, 'bus': 0.04,
                   'construction_vehicle': 0.04, 'bicycle': 0.06, 'motorcycle': 0.06,
                   'pedestrian': 0.18, 'traffic_cone': 0.10, 'barrier': 0.10}
CLASS_INTENSITY = {'car': 40.0, 'truck': 35.0, 'trailer': 30.0, 'bus': 45.0,
                   'construction_vehicle': 50.0, 'bicycle': 25.0, 'motorcycle': 30.0,
                   'pedestrian': 15.0, 'traffic_cone': 90.0, 'barrier': 70.0}
LOCATIONS = (('singapore-onenorth', 'n015', 8), ('singapore-hollandvillage', 'n015', 8),
             ('singapore-queenstown', 'n015', 8), ('boston-seaport', 'n008', -4))

SUN = np.array([0.45, -0.35, 0.82]) / np.linalg.norm([0.45, -0.35, 0.82])
SKY_HORIZON = np.array([205.0, 214.0, 224.0], np.float32)
SKY_ZENITH = np.array([112.0, 152.0, 208.0], np.float32)


# ----------------------------------------------------------------------------------------------
# Rig
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RigSpec:
    """A change of the nominal camera rig (the same change for all six cameras; the LiDAR is fixed).

    focal: multiplies fx and fy; height: metres added to every camera's z in the ego frame;
    pitch: degrees about each camera's own x axis, positive = the camera looks further down;
    roll: degrees about each camera's own optical (z) axis, applied after the pitch (about the
    pitched optical axis), with the sign of ``camera_delta``'s roll (``sf3d/datasets/transforms/
    perturb.py``) and ``CameraRigAug``: camera coordinates ``p_new = Rz(roll) Rx(pitch) p_nominal``,
    so the image content turns clockwise: a point right of the principal point moves down, one on
    the optical axis stays.
    """
    focal: float = 1.0
    height: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0


RIG_KEYS = tuple(RigSpec.__dataclass_fields__)  # ('focal', 'height', 'pitch', 'roll')
RIG_FILE = 'rig.json'  # written next to the tables: the rig(s) a dataroot was rendered through


def _rig_value_error(key: str, value: float) -> Optional[str]:
    """Why ``key=value`` is not a usable rig value (None if it is)."""
    if not math.isfinite(value):
        return 'must be finite'
    if key == 'focal' and value <= 0:
        return 'must be > 0'
    if key in ('pitch', 'roll') and abs(value) > 45:
        return 'degrees is outside [-45, 45]'
    if key == 'height' and not -1.5 <= value <= 3.0:
        return 'm is outside [-1.5, 3.0]'
    return None


def _read_rig_record(root: str) -> Tuple[str, dict]:
    path = osp.join(root, RIG_FILE)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} does not exist: {root} was not written by '
                                'tools/make_synthetic_nuscenes.py (which records its --rig there)')
    with open(path) as f:
        return path, json.load(f)


def _rig_from_record(record: dict, path: str) -> RigSpec:
    """A RigSpec from a rig.json mapping; a missing ``roll`` (files written before it existed) is 0."""
    try:
        values = {k: float(record[k]) for k in RIG_KEYS if k in record or k != 'roll'}
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f'{path}: expected numbers under {list(RIG_KEYS)}, got {record!r} '
                         f'({err})') from None
    return RigSpec(**values)


def is_multi_rig(root: str) -> bool:
    """Whether ``root`` was rendered with a rig per scene (``--rig-ranges``)."""
    return 'rig_ranges' in _read_rig_record(root)[1]


def read_rig(root: str) -> RigSpec:
    """The :class:`RigSpec` a single-rig dataroot was rendered through (its ``rig.json``). Raises
    FileNotFoundError naming the file when it is missing, ValueError when it is malformed or when the
    root is multi-rig (a rig per scene: use :func:`read_scene_rigs`)."""
    path, record = _read_rig_record(root)
    if 'rig_ranges' in record:
        raise ValueError(f'{path}: {root} is a multi-rig dataroot (rendered with --rig-ranges '
                         f'{format_rig_ranges(record["rig_ranges"])!r}: every scene has its own rig), so it has '
                         'no single rig; read its per-scene rigs with read_scene_rigs()')
    return _rig_from_record(record, path)


def read_scene_rigs(root: str) -> Dict[str, RigSpec]:
    """``{scene name: RigSpec}`` of a dataroot: the per-scene draws of a multi-rig root, or the one
    rig of a single-rig root for every scene of its version (from ``<version>/scene.json``)."""
    path, record = _read_rig_record(root)
    if 'rig_ranges' in record:
        try:
            return {name: _rig_from_record(values, path) for name, values in record['scene_rigs'].items()}
        except (KeyError, AttributeError) as err:
            raise ValueError(f'{path}: multi-rig rig.json without a scene_rigs mapping ({err})') from None
    rig = _rig_from_record(record, path)
    with open(osp.join(root, record.get('version', 'v1.0-mini'), 'scene.json')) as f:
        return {scene['name']: rig for scene in json.load(f)}


def _rig_items(text: str, flag: str, form: str, example: str) -> List[Tuple[str, str]]:
    """``'key=value,...'`` -> [(key, value text)], keys from :data:`RIG_KEYS`, each at most once."""
    items: List[Tuple[str, str]] = []
    for item in filter(None, (part.strip() for part in text.split(','))):
        key, sep, value = item.partition('=')
        key = key.strip()
        if not sep or key not in RIG_KEYS:
            raise ValueError(f"{flag}: bad item {item!r} in {text!r}; expected '{form}' with key in "
                             f"({', '.join(RIG_KEYS)}), e.g. '{example}'")
        if key in dict(items):
            raise ValueError(f'{flag}: {key!r} given twice in {text!r}')
        items.append((key, value))
    return items


def parse_rig(text: str) -> RigSpec:
    """Parse ``'focal=S,height=DZ,pitch=DEG,roll=DEG'`` (any subset, any order) into a :class:`RigSpec`."""
    values: Dict[str, float] = {}
    for key, value in _rig_items(text, '--rig', 'key=value', 'focal=1.0,height=0.0,pitch=0.0,roll=0.0'):
        try:
            values[key] = float(value)
        except ValueError:
            raise ValueError(f'--rig: {key}={value!r} is not a number (in {text!r})') from None
        if not math.isfinite(values[key]):
            raise ValueError(f'--rig: {key}={value!r} must be finite')
    rig = RigSpec(**values)
    for key in RIG_KEYS:
        problem = _rig_value_error(key, getattr(rig, key))
        if problem:
            raise ValueError(f'--rig: {key}={getattr(rig, key)} {problem}')
    return rig


def parse_rig_ranges(text: str) -> Dict[str, Tuple[float, float]]:
    """Parse ``'focal=0.9:1.1,height=-0.2:0.2,pitch=-2:2,roll=-1:1'`` (any non-empty subset, any
    order) into ``{key: (lo, hi)}``; see :func:`check_rig_ranges` for what is accepted."""
    ranges: Dict[str, Tuple[float, float]] = {}
    for key, value in _rig_items(text, '--rig-ranges', 'key=lo:hi',
                                 'focal=0.9:1.1,height=-0.2:0.2,pitch=-2:2,roll=-1:1'):
        lo, colon, hi = value.partition(':')
        if not colon:
            raise ValueError(f"--rig-ranges: {key}={value!r} is not a range 'lo:hi' (in {text!r})")
        try:
            ranges[key] = (float(lo), float(hi))
        except ValueError:
            raise ValueError(f'--rig-ranges: {key}={value!r}: {lo!r} or {hi!r} is not a number (in {text!r})') from None
    return check_rig_ranges(ranges)


def check_rig_ranges(ranges) -> Dict[str, Tuple[float, float]]:
    """Validate ``{key: (lo, hi)}``: known keys, finite numbers, lo <= hi, both ends valid rig values
    (focal > 0, |pitch|, |roll| <= 45 degrees, height in [-1.5, 3.0] m); at least one key. Returns
    the ranges as floats in :data:`RIG_KEYS` order."""
    if not isinstance(ranges, dict) or not ranges:
        raise ValueError(f'rig ranges must be a non-empty mapping {{key: (lo, hi)}} with keys in {RIG_KEYS}, '
                         f'got {ranges!r}')
    unknown = sorted(set(ranges) - set(RIG_KEYS))
    if unknown:
        raise ValueError(f'--rig-ranges: unknown key(s) {unknown}; expected keys in {RIG_KEYS}')
    out: Dict[str, Tuple[float, float]] = {}
    for key in RIG_KEYS:
        if key not in ranges:
            continue
        value = ranges[key]
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f'--rig-ranges: {key}={value!r} is not a pair of numbers (lo, hi)') from None
        for end in (lo, hi):
            problem = _rig_value_error(key, end)
            if problem:
                raise ValueError(f'--rig-ranges: {key}={lo:g}:{hi:g}: {key}={end:g} {problem}')
        if lo > hi:
            raise ValueError(f'--rig-ranges: {key}={lo:g}:{hi:g} has lo > hi')
        out[key] = (lo, hi)
    return out


def format_rig_ranges(ranges) -> str:
    """The ``--rig-ranges`` text of ``{key: (lo, hi)}``."""
    return ','.join(f'{k}={lo:g}:{hi:g}' for k, (lo, hi) in ranges.items())


def scene_rig(seed: int, version: str, name: str, rig_ranges, base: RigSpec = RigSpec()) -> RigSpec:
    """The rig of scene ``name``: every key of ``rig_ranges`` drawn uniformly in [lo, hi], the other
    keys from ``base``. A function of (seed, version, name) only, and each key's draw does not depend on
    which other keys are drawn (one uniform per key of :data:`RIG_KEYS`, always all four)."""
    ranges = check_rig_ranges(dict(rig_ranges))
    u = np.random.default_rng(_seed_int('sf3d-synthetic-nuscenes-rig', seed, version, name)).random(len(RIG_KEYS))
    values = asdict(base)
    for key, ui in zip(RIG_KEYS, u):
        if key in ranges:
            lo, hi = ranges[key]
            values[key] = lo + float(ui) * (hi - lo)
    return RigSpec(**values)


def build_calibration(image_scale: float = 0.25, rig: RigSpec = RigSpec()) -> Dict[str, dict]:
    """Calibration of every sensor: ``{channel: {translation, rotation, camera_intrinsic, width,
    height}}`` (rotation w, x, y, z sensor -> ego; intrinsics 3x3 list, [] for the LiDAR).

    A camera of ``rig``: rotation = nominal * pitch * roll (cam_new -> cam_pitched -> cam_nominal ->
    ego) with pitch = -rig.pitch degrees about x and roll = -rig.roll degrees about z."""
    if not 0 < image_scale <= 1:
        raise ValueError(f'image_scale={image_scale} must be in (0, 1]')
    width, height = int(round(FULL_WIDTH * image_scale)), int(round(FULL_HEIGHT * image_scale))
    if min(width, height) < 16:
        raise ValueError(f'image_scale={image_scale} gives {width}x{height} images; need >= 16 px')
    sx, sy = width / FULL_WIDTH, height / FULL_HEIGHT
    pitch = Quaternion(axis=[1.0, 0.0, 0.0], angle=-math.radians(rig.pitch))
    roll = Quaternion(axis=[0.0, 0.0, 1.0], angle=-math.radians(rig.roll))
    calib = {}
    for channel, (translation, rotation, intr) in NUSCENES_RIG.items():
        if intr is None:
            calib[channel] = dict(translation=list(translation), rotation=list(rotation),
                                  camera_intrinsic=[], width=0, height=0)
            continue
        f, cx, cy = intr
        q = (Quaternion(rotation) * pitch * roll).normalised  # cam_new -> cam_nominal -> ego
        calib[channel] = dict(
            translation=[translation[0], translation[1], translation[2] + rig.height],
            rotation=list(rotation) if rig.pitch == 0 and rig.roll == 0 else [float(v) for v in q.elements],
            camera_intrinsic=[[f * rig.focal * sx, 0.0, cx * sx], [0.0, f * rig.focal * sy, cy * sy],
                              [0.0, 0.0, 1.0]],
            width=width, height=height)
    return calib


# ----------------------------------------------------------------------------------------------
# Geometry helpers
# ----------------------------------------------------------------------------------------------
def make_token(*parts) -> str:
    """A 32-hex-digit token (like nuScenes') that is a pure function of ``parts``."""
    return hashlib.md5('/'.join(str(p) for p in parts).encode()).hexdigest()


def _yaw_quaternion(yaw: float) -> List[float]:
    yaw = math.atan2(math.sin(yaw), math.cos(yaw))
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def _quat_matrix(q: Sequence[float]) -> np.ndarray:
    return Quaternion(q).rotation_matrix


def _arc(s, curvature):
    """Displacement (along, lateral) and heading change after arc length ``s`` on a path of
    constant ``curvature`` that starts along +x; exact and stable for curvature -> 0."""
    ks = curvature * s
    along = s * np.sinc(ks / np.pi)
    lateral = s * (ks / 2) * np.sinc(ks / (2 * np.pi)) ** 2
    return along, lateral, ks


@dataclass(frozen=True)
class Road:
    """The road the ego drives: centre line (lateral d = 0) of constant curvature from p0, yaw0."""
    p0: Tuple[float, float]
    yaw0: float
    curvature: float

    def to_global(self, s, d):
        """(s, d) -> global xy (..., 2) and road heading (...)."""
        along, lateral, dh = _arc(np.asarray(s, float), self.curvature)
        heading = self.yaw0 + dh
        c, si = math.cos(self.yaw0), math.sin(self.yaw0)
        x = self.p0[0] + c * along - si * lateral - np.sin(heading) * d
        y = self.p0[1] + si * along + c * lateral + np.cos(heading) * d
        return np.stack([x, y], -1), heading

    def to_road(self, x, y):
        """Global x, y -> (s, d); valid within half a turn of the start."""
        c, si = math.cos(self.yaw0), math.sin(self.yaw0)
        dx, dy = x - self.p0[0], y - self.p0[1]
        lx, ly = c * dx + si * dy, -si * dx + c * dy
        k = self.curvature
        if k == 0.0:
            return lx, ly
        vy = ly - 1.0 / k
        r = np.sqrt(lx * lx + vy * vy)
        d = math.copysign(1.0, k) * (1.0 / abs(k) - r)
        s = np.arctan2(lx, -math.copysign(1.0, k) * vy) / abs(k)
        return s, d


def _rects_overlap(ca, yaw_a, half_a, cb, yaw_b, half_b) -> np.ndarray:
    """Separating-axis test of oriented rectangles (broadcast over leading dims).

    ca, cb: (..., 2) centres; yaw: (...); half: (..., 2) half length, half width.
    """
    axes = []
    for yaw in (yaw_a, yaw_b):
        u = np.stack([np.cos(yaw), np.sin(yaw)], -1)
        axes += [u, np.stack([-u[..., 1], u[..., 0]], -1)]
    ua, va, ub, vb = axes
    delta = cb - ca
    overlap = np.ones(np.broadcast_shapes(delta.shape[:-1], np.shape(yaw_a), np.shape(yaw_b)), bool)
    for n in axes:
        ra = half_a[..., 0] * np.abs((ua * n).sum(-1)) + half_a[..., 1] * np.abs((va * n).sum(-1))
        rb = half_b[..., 0] * np.abs((ub * n).sum(-1)) + half_b[..., 1] * np.abs((vb * n).sum(-1))
        overlap &= np.abs((delta * n).sum(-1)) <= ra + rb
    return overlap


# ----------------------------------------------------------------------------------------------
# Scene planning (everything here depends on seed, version, scene name and sample count only)
# ----------------------------------------------------------------------------------------------
@dataclass
class ScenePlan:
    """Content of one scene.  Times ``tau`` are seconds after the first sample.

    Objects (N of them): ``cls`` (N,) class index, ``wlh`` (N, 3), ``ref_xy`` (N, 2) and
    ``ref_yaw`` (N,) at time ``ref_tau`` (N,), ``speed`` (N,) m/s along the heading,
    ``curvature`` (N,) 1/m of the path (yaw rate = speed * curvature), ``attribute`` (N,) names
    ('' for none), ``tint`` (N,) brightness factor of the instance.
    """
    seed: int
    version: str
    name: str
    num_samples: int
    first_timestamp: int
    location: str
    vehicle: str
    utc_offset_h: int
    road: Road
    ego_v0: float
    ego_accel: float
    camera_offsets_us: np.ndarray  # (num_samples, 6) in CAMERAS order
    cls: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    wlh: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    ref_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    ref_yaw: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ref_tau: np.ndarray = field(default_factory=lambda: np.zeros(0))
    speed: np.ndarray = field(default_factory=lambda: np.zeros(0))
    curvature: np.ndarray = field(default_factory=lambda: np.zeros(0))
    attribute: List[str] = field(default_factory=list)
    tint: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def token(self, *parts) -> str:
        return make_token(self.seed, self.version, self.name, *parts)

    def sample_timestamp(self, index: int) -> int:
        return self.first_timestamp + index * SAMPLE_PERIOD_US

    def tau(self, timestamp_us: int) -> float:
        return (timestamp_us - self.first_timestamp) * 1e-6

    def ego_state(self, tau):
        """Ego xy (..., 2), yaw (...), speed (...) at scene time(s) tau."""
        tau = np.asarray(tau, float)
        s = self.ego_v0 * tau + 0.5 * self.ego_accel * tau ** 2
        xy, yaw = self.road.to_global(s, 0.0)
        return xy, yaw, self.ego_v0 + self.ego_accel * tau

    def object_states(self, tau):
        """Objects at scene time(s) tau (broadcast (T, 1) against (N,)): xy (..., 2), yaw (...),
        velocity (..., 2) in the global frame."""
        return _track_states(self.ref_xy, self.ref_yaw, self.ref_tau, self.speed, self.curvature, tau)

    def ego_rect(self, tau):
        xy, yaw, _ = self.ego_state(tau)
        rear, front, half_w = EGO_FOOTPRINT
        centre = xy + np.stack([np.cos(yaw), np.sin(yaw)], -1) * (rear + front) / 2
        return centre, yaw, np.array([(front - rear) / 2 + EGO_GAP / 2, half_w + EGO_GAP / 2])


def _track_states(ref_xy, ref_yaw, ref_tau, speed, curvature, tau):
    """Constant speed and yaw rate (= speed * curvature) from (ref_xy, ref_yaw) at ref_tau."""
    along, lateral, dh = _arc(speed * (np.asarray(tau, float) - ref_tau), curvature)
    c, s = np.cos(ref_yaw), np.sin(ref_yaw)
    xy = ref_xy + np.stack([c * along - s * lateral, s * along + c * lateral], -1)
    yaw = ref_yaw + dh
    return xy, yaw, np.asarray(speed)[..., None] * np.stack([np.cos(yaw), np.sin(yaw)], -1)


def scene_names(version: str) -> List[str]:
    """The real scene names of ``version`` (mini: mini_train + mini_val)."""
    from nuscenes.utils import splits
    if version == 'v1.0-mini':
        return list(splits.mini_train) + list(splits.mini_val)
    if version == 'v1.0-test':
        return list(splits.test[:NUM_TEST_SCENES])
    raise ValueError(f'version {version!r} is not supported; expected one of {VERSIONS}')


def _seed_int(*parts) -> int:
    return int(hashlib.sha256('/'.join(str(p) for p in parts).encode()).hexdigest()[:16], 16)


def plan_scene(seed: int, version: str, name: str, num_samples: int) -> ScenePlan:
    """Sample the ego motion, camera timing and objects of one scene (deterministic)."""
    rng = np.random.default_rng(_seed_int('sf3d-synthetic-nuscenes', seed, version, name))
    location, vehicle, utc = LOCATIONS[int(rng.integers(len(LOCATIONS)))]
    first_ts = 1_530_000_000_000_000 + int(rng.integers(0, 90 * 86400)) * 1_000_000 \
        + int(rng.integers(0, 1_000_000))
    duration = (num_samples - 1) * SAMPLE_PERIOD_US * 1e-6
    curvature = 0.0 if rng.random() < 0.4 else float(rng.choice([-1, 1]) * rng.uniform(0.004, 0.02))
    road = Road((float(rng.uniform(300, 1700)), float(rng.uniform(300, 1700))),
                float(rng.uniform(-math.pi, math.pi)), curvature)
    v0, v1 = rng.uniform(0, 12, 2)
    offsets = np.array([CAMERA_OFFSETS_US[c] for c in CAMERAS])[None] + rng.integers(
        -CAMERA_JITTER_US, CAMERA_JITTER_US + 1, (num_samples, len(CAMERAS)))
    plan = ScenePlan(seed, version, name, num_samples, first_ts, location, vehicle, utc, road,
                     float(v0), float((v1 - v0) / duration), offsets)
    _place_objects(plan, rng)
    return plan


def _propose(rng, plan: ScenePlan, cls: str, tau_anchor: float, radius: float) -> Optional[dict]:
    """One candidate object of class ``cls`` near the ego at time ``tau_anchor``."""
    road = plan.road
    wlh = np.array(CLASS_SIZES_WLH[cls]) * rng.uniform(0.9, 1.1) * rng.uniform(0.95, 1.05, 3)
    p_move, (v_lo, v_hi) = MOTION[cls]
    moving = rng.random() < p_move
    speed = float(rng.uniform(v_lo, v_hi)) if moving else 0.0
    ego_xy = plan.ego_state(tau_anchor)[0]
    s_ego = plan.ego_v0 * tau_anchor + 0.5 * plan.ego_accel * tau_anchor ** 2
    s = s_ego + rng.uniform(-radius, radius)
    side = float(rng.choice([-1.0, 1.0]))
    follow_road = False
    if cls in ('car', 'truck', 'trailer', 'bus', 'motorcycle') and (moving or rng.random() < 0.3):
        d = float(rng.choice(LANE_CENTRES)) + rng.normal(0, 0.15)   # driving / stopped in a lane
        rel = 0.0 if d <= 1.75 else math.pi
        follow_road = moving
    elif cls in ('car', 'truck', 'trailer', 'bus', 'motorcycle', 'bicycle') and rng.random() < 0.6:
        d = side * (ROAD_EDGE - wlh[0] / 2 - rng.uniform(0.1, 0.4))  # parked / riding at the kerb
        rel = (0.0 if side < 0 else math.pi) + (0.0 if moving else rng.normal(0, 0.05))
        follow_road = moving
    elif cls == 'pedestrian' and moving and rng.random() < 0.25:
        d = rng.uniform(-SIDEWALK_EDGE, SIDEWALK_EDGE)                # crossing the road
        rel = side * math.pi / 2 + rng.normal(0, 0.1)
    elif cls in ('pedestrian', 'bicycle'):
        d = side * rng.uniform(ROAD_EDGE + 0.6, SIDEWALK_EDGE - 0.4)  # on the sidewalk
        rel = (rng.choice([0.0, math.pi]) + rng.normal(0, 0.1)) if moving else rng.uniform(-math.pi, math.pi)
    elif cls == 'traffic_cone':
        d = rng.uniform(-SIDEWALK_EDGE, SIDEWALK_EDGE)
        rel = rng.uniform(-math.pi, math.pi)
    elif cls == 'barrier' and rng.random() < 0.7:
        d = side * rng.uniform(ROAD_EDGE - 0.6, SIDEWALK_EDGE)        # lining the road
        rel = math.pi / 2 + rng.normal(0, 0.05)
    else:
        d = side * rng.uniform(SIDEWALK_EDGE + 2, 40.0)               # off-road lot
        rel = rng.uniform(-math.pi, math.pi)
    xy, heading = road.to_global(s, d)
    if not 3.0 <= np.linalg.norm(xy - ego_xy) <= radius:
        return None
    curvature = 0.0
    if follow_road:  # stay in the lane: the parallel curve at offset d has curvature k / (1 - k d)
        k = road.curvature / (1.0 - road.curvature * d)
        curvature = k if abs(rel) < 1.0 else -k
    attribute = RULE_ATTRIBUTES[cls][int(moving)]
    return dict(cls=CLASSES.index(cls), wlh=wlh, ref_xy=xy, ref_yaw=float(heading + rel),
                ref_tau=tau_anchor, speed=speed, curvature=float(curvature), attribute=attribute,
                tint=float(rng.uniform(0.85, 1.0)))


def _place_objects(plan: ScenePlan, rng) -> None:
    """Fill the scene: one object of every class within 25 m of the ego, then more objects until
    every sample has its target count within 45 m (never more than 40), rejecting candidates that
    touch the ego or another object at any time of the scene (checked every 0.1 s)."""
    sample_taus = np.arange(plan.num_samples) * SAMPLE_PERIOD_US * 1e-6
    check_taus = np.arange(-0.1, sample_taus[-1] + 0.15, 0.1)
    ego_c, ego_yaw, ego_half = plan.ego_rect(check_taus)
    ego_xy_samples = plan.ego_state(sample_taus)[0]
    objs: List[dict] = []
    traj_xy, traj_yaw, traj_half = [], [], []       # per object: (T, 2), (T,), (2,)
    counts = np.zeros(plan.num_samples, int)
    target = int(rng.integers(OBJECTS_PER_SAMPLE[0] + 5, OBJECTS_PER_SAMPLE[1] - 5))

    def try_add(obj) -> bool:
        nonlocal counts
        motion = [obj[key] for key in ('ref_xy', 'ref_yaw', 'ref_tau', 'speed', 'curvature')]
        xy, yaw, _ = _track_states(*motion, check_taus)  # (T, 2), (T,)
        half = obj['wlh'][[1, 0]] / 2 + OBJECT_GAP / 2
        if _rects_overlap(ego_c, ego_yaw, ego_half, xy, yaw, half).any():
            return False
        if objs and _rects_overlap(np.stack(traj_xy), np.stack(traj_yaw), np.stack(traj_half)[:, None],
                                   xy[None], yaw[None], half).any():
            return False
        sxy = _track_states(*motion, sample_taus)[0]
        new_counts = counts + (np.linalg.norm(sxy - ego_xy_samples, axis=-1) <= ANNOTATION_RADIUS)
        if new_counts.max() > OBJECTS_PER_SAMPLE[1]:
            return False
        counts = new_counts
        objs.append(obj)
        traj_xy.append(xy)
        traj_yaw.append(yaw)
        traj_half.append(half)
        return True

    for cls in CLASSES:
        for _ in range(2000):
            obj = _propose(rng, plan, cls, float(rng.choice(sample_taus)), 25.0)
            if obj is not None and try_add(obj):
                break
        else:
            raise RuntimeError(f'{plan.name}: could not place a {cls} (please report this seed)')
    freq = np.array([CLASS_FREQUENCY[c] for c in CLASSES])
    for _ in range(5000):
        if counts.min() >= target:
            break
        tau = float(sample_taus[int(np.argmin(counts))])
        obj = _propose(rng, plan, CLASSES[int(rng.choice(len(CLASSES), p=freq / freq.sum()))], tau,
                       ANNOTATION_RADIUS)
        if obj is not None:
            try_add(obj)
    plan.cls = np.array([o['cls'] for o in objs], int)
    plan.wlh = np.stack([o['wlh'] for o in objs])
    plan.ref_xy = np.stack([o['ref_xy'] for o in objs])
    for key in ('ref_yaw', 'ref_tau', 'speed', 'curvature', 'tint'):
        setattr(plan, key, np.array([o[key] for o in objs], float))
    plan.attribute = [o['attribute'] for o in objs]


# ----------------------------------------------------------------------------------------------
# Ray casting: boxes, ground texture, LiDAR and cameras
# ----------------------------------------------------------------------------------------------
@dataclass
class Boxes:
    """Upright boxes in the global frame: centre (N, 3) (gravity centre), wlh (N, 3), yaw (N,)."""
    centre: np.ndarray
    wlh: np.ndarray
    yaw: np.ndarray

    def rotations(self) -> np.ndarray:
        """(N, 3, 3) box -> global rotations (x along the length, y along the width)."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        rot = np.zeros((len(self.yaw), 3, 3))
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = c, -s, s, c, 1.0
        return rot

    def half_extents(self) -> np.ndarray:
        """(N, 3) half length, half width, half height."""
        return self.wlh[:, [1, 0, 2]] / 2

    def corners(self) -> np.ndarray:
        """(N, 8, 3) corners in the global frame."""
        signs = np.array([[sx, sy, sz] for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)], float)
        local = signs[None] * self.half_extents()[:, None]
        return np.einsum('nij,nkj->nki', self.rotations(), local) + self.centre[:, None]

    def local(self, points: np.ndarray) -> np.ndarray:
        """(P, 3) global points -> (N, P, 3) coordinates in every box frame."""
        c, s = np.cos(self.yaw)[:, None], np.sin(self.yaw)[:, None]
        dx = points[None, :, 0] - self.centre[:, None, 0]  # (N, P)
        dy = points[None, :, 1] - self.centre[:, None, 1]
        dz = points[None, :, 2] - self.centre[:, None, 2]
        return np.stack([c * dx + s * dy, c * dy - s * dx, dz], -1)


def _slab(origin: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, half: np.ndarray):
    """Ray / axis-aligned box intersection (slab method), rays ``origin + t (dx, dy, dz)``.

    origin (3,) and half extents (3,) in the box frame; direction components (...).  Returns
    entry distance, exit distance and entry face (2 * axis + 1 if its outward normal points along
    +axis, else 2 * axis), all (...); a ray hits where exit >= entry.
    """
    entry = exit_ = face = None
    for axis, d in enumerate((dx, dy, dz)):
        inv = 1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)
        t1 = (-half[axis] - origin[axis]) * inv
        t2 = (half[axis] - origin[axis]) * inv
        lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
        this_face = 2 * axis + (d < 0)
        if entry is None:
            entry, exit_, face = lo, hi, this_face
        else:
            face = np.where(lo > entry, this_face, face)
            entry, exit_ = np.maximum(entry, lo), np.minimum(exit_, hi)
    return entry, exit_, face


def _cell_noise(x: np.ndarray, y: np.ndarray, cell: float) -> np.ndarray:
    """Deterministic value noise in [0, 1) on a grid of ``cell`` metres (coordinates > 0)."""
    ix = np.floor(x / cell).astype(np.int64)
    iy = np.floor(y / cell).astype(np.int64)
    h = (ix * 73856093) ^ (iy * 19349663)
    h = (h ^ (h >> 13)) * 1274126177 & 0xFFFFFFFF
    return ((h ^ (h >> 16)) & 0xFF).astype(np.float32) / 256.0


def _fmod(x: np.ndarray, period: float) -> np.ndarray:
    """x mod period in [0, period) (faster than np.mod)."""
    return x - np.floor(x * (1.0 / period)) * period


def ground_texture(road: Road, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Colour (3, P) float32 RGB (channel first) and LiDAR intensity (P,) of the ground at
    global x, y (P,)."""
    s, d = road.to_road(x, y)
    ad = np.abs(d)
    asphalt = ad < ROAD_EDGE
    terrain = ad >= SIDEWALK_EDGE
    joint = (_fmod(s, 2.0) < 0.08) | (_fmod(ad - ROAD_EDGE, 2.0) < 0.08)
    gain = np.where(asphalt, 0.93 + 0.14 * _cell_noise(x, y, 0.5),
                    np.where(terrain, 0.85 + 0.25 * _cell_noise(x, y, 1.0), np.where(joint, 0.78, 1.0)))
    dashed = np.zeros(x.shape, bool)
    for m in LANE_MARKS:
        dashed |= np.abs(d - m) < 0.08
    paint = (dashed & (_fmod(s, 9.0) < 3.0)) | (np.abs(ad - (ROAD_EDGE - 0.2)) < 0.1)
    colour = np.empty((3,) + x.shape, np.float32)
    for c, (road_c, terrain_c, walk_c, paint_c) in enumerate(zip(
            (82, 83, 88), (118, 112, 98), (158, 156, 150), (222, 222, 210))):
        colour[c] = np.where(paint, paint_c,
                             np.where(asphalt, road_c, np.where(terrain, terrain_c, walk_c)) * gain)
    intensity = np.where(paint, 60.0, np.where(asphalt, 6.0, 12.0)).astype(np.float32)
    return colour, intensity


class Camera:
    """A pinhole camera: rays (H, W, 3) of every pixel in the camera frame, scaled to z = 1 (so a
    ray parameter is the depth), with pixel centres at integer coordinates of intrinsics K."""

    def __init__(self, intrinsic: Sequence[Sequence[float]], width: int, height: int):
        self.K = np.asarray(intrinsic, float)
        self.width, self.height = width, height
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        u, v = np.meshgrid(np.arange(width, dtype=float), np.arange(height, dtype=float))
        self.rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1).astype(np.float32)
        self.ray_norm = np.linalg.norm(self.rays, axis=-1)  # (H, W)

    def box_window(self, corners_cam: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
        """Pixel rectangle (v0, v1, u0, u1) covering a box (corners (8, 3) in the camera frame)
        clipped at the near plane, or None when it is not in view."""
        z = corners_cam[:, 2]
        front = z > NEAR_PLANE
        if not front.any():
            return None
        pts = [corners_cam[front]]
        if not front.all():
            for i, j in _BOX_EDGES:
                if front[i] != front[j]:
                    a = (NEAR_PLANE - z[i]) / (z[j] - z[i])
                    pts.append((corners_cam[i] + a * (corners_cam[j] - corners_cam[i]))[None])
        pts = np.concatenate(pts)
        u = pts[:, 0] / pts[:, 2] * self.K[0, 0] + self.K[0, 2]
        v = pts[:, 1] / pts[:, 2] * self.K[1, 1] + self.K[1, 2]
        u0, u1 = max(int(math.floor(u.min())) - 1, 0), min(int(math.ceil(u.max())) + 2, self.width)
        v0, v1 = max(int(math.floor(v.min())) - 1, 0), min(int(math.ceil(v.max())) + 2, self.height)
        return (v0, v1, u0, u1) if u0 < u1 and v0 < v1 else None


# Corner pairs of the 12 box edges (corners of Boxes.corners differ in exactly one sign).
_BOX_EDGES = [(i, j) for i in range(8) for j in range(i + 1, 8) if bin(i ^ j).count('1') == 1]


def cast_boxes(camera: Camera, cam2global: np.ndarray, boxes: Boxes,
               on_hit: Optional[Callable] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Z-buffer the boxes as seen by ``camera`` (the ground never hides a box standing on it).

    Returns the box id per pixel (H, W) (-1 = none) and the per-box pixel counts (N,) of each box
    ignoring all occluders.  ``on_hit(k, window, mask, face)`` is told which pixels of ``window``
    (v0, v1, u0, u1) now show box k and through which face (see :func:`_slab`).
    """
    rot_c, origin = cam2global[:3, :3], cam2global[:3, 3]
    depth = np.full((camera.height, camera.width), np.inf)
    ids = np.full(depth.shape, -1, np.int32)
    own = np.zeros(len(boxes.yaw), np.int64)
    rots, halves = boxes.rotations(), boxes.half_extents()
    corners_cam = (boxes.corners() - origin) @ rot_c  # (N, 8, 3)
    for k in range(len(boxes.yaw)):
        window = camera.box_window(corners_cam[k])
        if window is None:
            continue
        v0, v1, u0, u1 = window
        dirs = camera.rays[v0:v1, u0:u1] @ (rots[k].T @ rot_c).T.astype(np.float32)  # (h, w, 3) box frame
        entry, exit_, face = _slab(rots[k].T @ (origin - boxes.centre[k]), dirs[..., 0], dirs[..., 1],
                                   dirs[..., 2], halves[k])
        hit = (exit_ >= entry) & (entry > NEAR_PLANE)
        own[k] = np.count_nonzero(hit)
        sub = depth[v0:v1, u0:u1]
        shown = hit & (entry < sub)
        if not shown.any():
            continue
        sub[shown] = entry[shown]
        ids[v0:v1, u0:u1][shown] = k
        if on_hit is not None:
            on_hit(k, window, shown, face)
    return ids, own


def render_camera(camera: Camera, cam2global: np.ndarray, road: Road, boxes: Boxes,
                  colours: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one view.  colours: (N, 3) fully lit RGB per box.

    Returns the image (H, W, 3) uint8, the box id map (H, W) and per-box own pixel counts (N,)
    (see :func:`cast_boxes`).
    """
    rot_c, origin = cam2global[:3, :3], cam2global[:3, 3]
    dirs = camera.rays @ rot_c.T.astype(np.float32)  # (H, W, 3) global, depth-scaled
    dz = dirs[..., 2]
    # Sky: gradient by elevation of the ray.  The image is built channel first: (3, H, W).
    a = np.clip(dz / camera.ray_norm * 2.5, 0.0, 1.0)
    image = np.stack([h + (z - h) * a for h, z in zip(SKY_HORIZON, SKY_ZENITH)])
    # Ground plane z = 0, textured, with distance haze.
    ground = dz < -1e-6
    t = -origin[2] / dz[ground]
    colour, _ = ground_texture(road, origin[0] + t * dirs[..., 0][ground], origin[1] + t * dirs[..., 1][ground])
    haze = 1.0 - np.exp(-t * camera.ray_norm[ground] / 150.0)
    image[:, ground] = colour + (SKY_HORIZON[:, None] - colour) * haze

    rots = boxes.rotations()
    face_normals = np.stack([-rots[:, :, 0], rots[:, :, 0], -rots[:, :, 1], rots[:, :, 1],
                             -rots[:, :, 2], rots[:, :, 2]], 1)  # (N, 6, 3) global
    face_colours = (colours[:, None] * (0.38 + 0.62 * np.clip(face_normals @ SUN, 0, 1))[..., None]
                    ).astype(np.float32)  # (N, 6, 3)

    def paint(k, window, mask, face):
        v0, v1, u0, u1 = window
        image[:, v0:v1, u0:u1][:, mask] = face_colours[k][face[mask]].T

    ids, own = cast_boxes(camera, cam2global, boxes, paint)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0), ids, own


def _lidar_directions() -> Tuple[np.ndarray, np.ndarray]:
    """Unit ray directions (32, A, 3) in the LiDAR frame and the ring index (32, A) of each."""
    el = np.radians(LIDAR_ELEVATIONS_DEG)[:, None]
    az = -np.pi + 2 * np.pi * (np.arange(LIDAR_AZIMUTHS) + 0.5) / LIDAR_AZIMUTHS
    dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el) * np.ones_like(az)], -1)
    rings = np.broadcast_to(np.arange(len(LIDAR_ELEVATIONS_DEG))[:, None], dirs.shape[:2])
    return dirs, rings


def cast_lidar(lidar2global: np.ndarray, ego2global: np.ndarray, road: Road, boxes: Boxes,
               box_intensity: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Simulate one sweep.  Returns points (P, 5) float32 (x, y, z, intensity, ring) in the LiDAR
    frame and the number of points inside each box (N,)."""
    dirs_l, rings = _lidar_directions()
    rot, origin = lidar2global[:3, :3], lidar2global[:3, 3]
    dirs = dirs_l @ rot.T  # (R, A, 3) global
    dz = dirs[..., 2]
    down = dz < -1e-9
    best = np.where(down, -origin[2] / np.where(down, dz, -1.0), np.inf)
    hit_id = np.where(best < LIDAR_RANGE, -1, -2).astype(np.int32)  # -2 none, -1 ground, -3 dropped
    best = np.minimum(best, LIDAR_RANGE)

    rots, halves = boxes.rotations(), boxes.half_extents()
    corners_l = (boxes.corners() - origin) @ rot  # (N, 8, 3) LiDAR frame
    step = 2 * np.pi / LIDAR_AZIMUTHS
    for k in range(len(boxes.yaw)):
        centre_az = math.atan2(corners_l[k, :, 1].mean(), corners_l[k, :, 0].mean())
        rel = np.angle(np.exp(1j * (np.arctan2(corners_l[k, :, 1], corners_l[k, :, 0]) - centre_az)))
        margin = 0.1 / max(np.linalg.norm(corners_l[k, :, :2], axis=-1).min(), 0.1)  # >= 5 cm around it
        lo = int(math.floor((centre_az + rel.min() - margin + np.pi) / step - 0.5))
        hi = int(math.ceil((centre_az + rel.max() + margin + np.pi) / step - 0.5))
        cols = np.arange(lo, hi + 1) % LIDAR_AZIMUTHS
        sub = dirs[:, cols] @ rots[k]  # (R, C, 3) box frame
        o = rots[k].T @ (origin - boxes.centre[k])
        cur_best, cur_id = best[:, cols], hit_id[:, cols]
        # Ground returns within 5 cm of the footprint would sit on the box boundary: drop them.
        gx, gy = o[0] + cur_best * sub[..., 0], o[1] + cur_best * sub[..., 1]
        cur_id[(cur_id == -1) & (np.abs(gx) <= halves[k, 0] + 0.05) & (np.abs(gy) <= halves[k, 1] + 0.05)] = -3
        entry, exit_, _ = _slab(o, sub[..., 0], sub[..., 1], sub[..., 2], halves[k])
        closer = (exit_ >= entry) & (entry > 0) & (entry < cur_best)
        cur_best[closer], cur_id[closer] = entry[closer], k
        best[:, cols], hit_id[:, cols] = cur_best, cur_id

    valid = hit_id >= -1
    ids, ring = hit_id[valid], rings[valid].astype(np.float32)
    pts = origin + best[valid][:, None] * dirs[valid]  # (P, 3) global
    intensity = np.zeros(len(pts), np.float32)
    ground = ids == -1
    intensity[ground] = ground_texture(road, pts[ground, 0], pts[ground, 1])[1]
    # Drop ground returns under the ego (the sensor sees its own car there).
    ego_local = (pts - ego2global[:3, 3]) @ ego2global[:3, :3]
    rear, front, half_w = EGO_FOOTPRINT
    keep = ~(ground & (ego_local[:, 0] > rear - 0.3) & (ego_local[:, 0] < front + 0.3)
             & (np.abs(ego_local[:, 1]) < half_w + 0.3))
    # Box returns: pull 2 cm inside the box so that inclusion does not hinge on rounding.
    counts = np.bincount(ids[ids >= 0], minlength=len(boxes.yaw))
    extra = []
    for k in range(len(boxes.yaw)):
        sel = ids == k
        if counts[k]:
            local = (pts[sel] - boxes.centre[k]) @ rots[k]
            pts[sel] = np.clip(local, -halves[k] + 0.02, halves[k] - 0.02) @ rots[k].T + boxes.centre[k]
            intensity[sel] = box_intensity[k]
            continue
        # No ray reached the box: three points just inside its face nearest to the sensor.
        near = np.clip(rots[k].T @ (origin - boxes.centre[k]), -halves[k] + 0.02, halves[k] - 0.02)
        local = np.clip(near + np.array([[0, 0, 0], [0, 0, -0.3], [0, 0, 0.3]]) * halves[k],
                        -halves[k] + 0.02, halves[k] - 0.02)
        cand = local @ rots[k].T + boxes.centre[k]
        rel = (cand - origin) @ rot
        el = np.degrees(np.arctan2(rel[:, 2], np.linalg.norm(rel[:, :2], axis=-1)))
        ring_k = np.abs(el[:, None] - LIDAR_ELEVATIONS_DEG[None]).argmin(-1)
        extra.append(np.concatenate([cand, np.full((3, 1), box_intensity[k]), ring_k[:, None]], 1))
        counts[k] = 3
    cloud = np.concatenate([np.concatenate([pts, intensity[:, None], ring[:, None]], 1)[keep]] + extra)
    cloud[:, :3] = (cloud[:, :3] - origin) @ rot  # global -> LiDAR frame
    return cloud.astype(np.float32), counts

# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def _pose_matrix(translation: Sequence[float], rotation: Sequence[float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = _quat_matrix(rotation)
    m[:3, 3] = translation
    return m


def _ego_pose_record(plan: ScenePlan, token: str, timestamp: int) -> dict:
    xy, yaw, _ = plan.ego_state(plan.tau(timestamp))
    return dict(token=token, timestamp=timestamp, rotation=_yaw_quaternion(float(yaw)),
                translation=[float(xy[0]), float(xy[1]), 0.0])


def _log_name(plan: ScenePlan) -> str:
    tz = timezone(timedelta(hours=plan.utc_offset_h))
    start = datetime.fromtimestamp(plan.first_timestamp // 1_000_000, tz)
    return f"{plan.vehicle}-{start.strftime('%Y-%m-%d-%H-%M-%S')}{start.strftime('%z')}"


def _static_tables() -> Dict[str, list]:
    return dict(
        category=[dict(token=make_token('category', name), name=name, index=i + 1,
                       description=f'nuScenes category {name}.') for i, name in enumerate(ALL_CATEGORIES)],
        attribute=[dict(token=make_token('attribute', name), name=name,
                        description=f'nuScenes attribute {name}.') for name in ATTRIBUTES],
        visibility=[dict(token=tok, level=level,
                         description=f'visibility of whole object is between {level[1:].replace("-", " and ")}%')
                    for tok, level, _ in VISIBILITY_LEVELS],
        sensor=[dict(token=make_token('sensor', ch), channel=ch,
                     modality='lidar' if ch == LIDAR else 'camera') for ch in CAMERAS + (LIDAR,)],
    )


def _visibility_token(fraction: float) -> str:
    token = VISIBILITY_LEVELS[0][0]
    for tok, _, lower in VISIBILITY_LEVELS:
        if fraction >= lower:
            token = tok
    return token


def _scene_records(plan: ScenePlan, dataroot: str, calib: Dict[str, dict], vis_calib: Dict[str, dict],
                   annotated: bool) -> Dict[str, list]:
    """Write the sensor files of one scene and return its table records."""
    tables: Dict[str, list] = {name: [] for name in TABLES}
    log_token = plan.token('log')
    log_name = _log_name(plan)
    tables['log'].append(dict(token=log_token, logfile=log_name, vehicle=plan.vehicle,
                              date_captured=log_name[5:15], location=plan.location))
    scene_token = plan.token('scene')
    sample_tokens = [plan.token('sample', i) for i in range(plan.num_samples)]
    tables['scene'].append(dict(
        token=scene_token, log_token=log_token, nbr_samples=plan.num_samples,
        first_sample_token=sample_tokens[0], last_sample_token=sample_tokens[-1], name=plan.name,
        description=f'{SCENE_DESCRIPTION} ({plan.location}, road curvature {plan.road.curvature:.4f} 1/m).'))
    cs_tokens = {}
    for ch in CAMERAS + (LIDAR,):
        cs_tokens[ch] = plan.token('calibrated_sensor', ch)
        c = calib[ch]
        tables['calibrated_sensor'].append(dict(
            token=cs_tokens[ch], sensor_token=make_token('sensor', ch), translation=c['translation'],
            rotation=c['rotation'], camera_intrinsic=c['camera_intrinsic']))
    sensor2ego = {ch: _pose_matrix(calib[ch]['translation'], calib[ch]['rotation']) for ch in calib}
    vis2ego = {ch: _pose_matrix(vis_calib[ch]['translation'], vis_calib[ch]['rotation']) for ch in CAMERAS}
    cameras = {ch: Camera(calib[ch]['camera_intrinsic'], calib[ch]['width'], calib[ch]['height'])
               for ch in CAMERAS}
    same_rig = calib == vis_calib
    vis_cameras = cameras if same_rig else {
        ch: Camera(vis_calib[ch]['camera_intrinsic'], vis_calib[ch]['width'], vis_calib[ch]['height'])
        for ch in CAMERAS}
    n_obj = len(plan.cls)
    colours = np.array([CLASS_COLOURS[CLASSES[c]] for c in plan.cls], np.float32) * plan.tint[:, None]
    intensity = np.array([CLASS_INTENSITY[CLASSES[c]] for c in plan.cls], np.float32)
    instance_tokens = [plan.token('instance', k) for k in range(n_obj)]
    attr_tokens = [[make_token('attribute', a)] if a else [] for a in plan.attribute]
    prev_sd = {ch: '' for ch in CAMERAS + (LIDAR,)}

    for i, sample_token in enumerate(sample_tokens):
        ts = plan.sample_timestamp(i)
        tau = plan.tau(ts)
        xy, yaw, _ = plan.object_states(tau)
        boxes = Boxes(np.concatenate([xy, plan.wlh[:, 2:] / 2], 1), plan.wlh, yaw)
        tables['sample'].append(dict(token=sample_token, timestamp=ts, scene_token=scene_token,
                                     prev=sample_tokens[i - 1] if i else '',
                                     next=sample_tokens[i + 1] if i + 1 < plan.num_samples else ''))
        own = np.zeros(n_obj, np.int64)
        visible = np.zeros(n_obj, np.int64)
        for j, ch in enumerate(CAMERAS + (LIDAR,)):
            sd_ts = ts if ch == LIDAR else ts + int(plan.camera_offsets_us[i, j])
            sd_token = plan.token('sample_data', ch, i)
            pose = _ego_pose_record(plan, sd_token, sd_ts)  # nuScenes: ego_pose token = sample_data token
            tables['ego_pose'].append(pose)
            ego2global = _pose_matrix(pose['translation'], pose['rotation'])
            filename = f'samples/{ch}/{log_name}__{ch}__{sd_ts}' + ('.pcd.bin' if ch == LIDAR else '.jpg')
            if ch == LIDAR:
                cloud, num_pts = cast_lidar(ego2global @ sensor2ego[ch], ego2global, plan.road, boxes,
                                            intensity)
                cloud.tofile(osp.join(dataroot, filename))
                width = height = 0
            else:
                image, ids, own_c = render_camera(cameras[ch], ego2global @ sensor2ego[ch], plan.road,
                                                  boxes, colours)
                Image.fromarray(image).save(osp.join(dataroot, filename), quality=JPEG_QUALITY,
                                            subsampling=0)
                if not same_rig:
                    ids, own_c = cast_boxes(vis_cameras[ch], ego2global @ vis2ego[ch], boxes)
                own += own_c
                visible += np.bincount(ids[ids >= 0], minlength=n_obj)
                width, height = calib[ch]['width'], calib[ch]['height']
            tables['sample_data'].append(dict(
                token=sd_token, sample_token=sample_token, ego_pose_token=sd_token,
                calibrated_sensor_token=cs_tokens[ch], timestamp=sd_ts,
                fileformat='pcd' if ch == LIDAR else 'jpg', is_key_frame=True, height=height,
                width=width, filename=filename, prev=prev_sd[ch],
                next=plan.token('sample_data', ch, i + 1) if i + 1 < plan.num_samples else ''))
            prev_sd[ch] = sd_token
        if annotated:
            fraction = visible / np.maximum(own, 1)
            for k in range(n_obj):
                tables['sample_annotation'].append(dict(
                    token=plan.token('annotation', k, i), sample_token=sample_token,
                    instance_token=instance_tokens[k], visibility_token=_visibility_token(fraction[k]),
                    attribute_tokens=attr_tokens[k],
                    translation=[float(v) for v in boxes.centre[k]],
                    size=[float(v) for v in plan.wlh[k]], rotation=_yaw_quaternion(float(yaw[k])),
                    prev=plan.token('annotation', k, i - 1) if i else '',
                    next=plan.token('annotation', k, i + 1) if i + 1 < plan.num_samples else '',
                    num_lidar_pts=int(num_pts[k]), num_radar_pts=0))
    if annotated:
        for k in range(n_obj):
            tables['instance'].append(dict(
                token=instance_tokens[k], category_token=make_token('category', CLASS_CATEGORY[CLASSES[plan.cls[k]]]),
                nbr_annotations=plan.num_samples, first_annotation_token=plan.token('annotation', k, 0),
                last_annotation_token=plan.token('annotation', k, plan.num_samples - 1)))
    return tables


def _scene_job(job: tuple) -> Dict[str, list]:
    seed, version, name, samples_per_scene, out_dir, calib, vis_calib, annotated = job
    return _scene_records(plan_scene(seed, version, name, samples_per_scene), out_dir, calib, vis_calib,
                          annotated)


@contextlib.contextmanager
def _pool(workers: int):
    """A forked process pool, or None (run in this process) for one worker or without fork."""
    if workers <= 1 or 'fork' not in multiprocessing.get_all_start_methods():
        yield None
        return
    with multiprocessing.get_context('fork').Pool(workers) as pool:
        yield pool


def _remove_previous(out_dir: str, version: str) -> None:
    """Delete a previous synthetic dataset of this version (its tables and the files they list);
    refuse to touch anything else."""
    table_dir = osp.join(out_dir, version)
    if not osp.exists(table_dir):
        return
    scene_path = osp.join(table_dir, 'scene.json')
    scenes = []
    if osp.exists(scene_path):
        with open(scene_path) as f:
            scenes = json.load(f)
    if not scenes or not all(sc.get('description', '').startswith(SCENE_DESCRIPTION) for sc in scenes):
        raise ValueError(f'{table_dir} exists and is not a synthetic dataset written by this generator; '
                         'refusing to overwrite it (choose another --out)')
    sd_path = osp.join(table_dir, 'sample_data.json')
    if osp.exists(sd_path):
        with open(sd_path) as f:
            for rec in json.load(f):
                path = osp.join(out_dir, rec['filename'])
                if osp.exists(path):
                    os.remove(path)
    if osp.isdir(table_dir):
        shutil.rmtree(table_dir)


def generate(out_dir: str, *, seed: int = 0, samples_per_scene: int = 10, image_scale: float = 0.25,
             version: str = 'v1.0-mini', rig: RigSpec = RigSpec(), rig_ranges=None, progress: bool = True,
             workers: Optional[int] = None) -> Dict[str, int]:
    """Write a synthetic nuScenes ``version`` under ``out_dir`` (replacing an earlier one).

    ``rig_ranges`` (``{key: (lo, hi)}`` or a ``--rig-ranges`` text; None: one rig for all scenes)
    gives every scene its own rig (:func:`scene_rig`): the keys of the ranges drawn per scene, the
    other keys from ``rig``.  A key may not be both drawn and set away from nominal in ``rig``.
    Scenes are made in ``workers`` processes (default: one per CPU); the output does not depend
    on it.  Returns counts: {'scenes', 'samples', 'annotations', 'instances'}.
    """
    if version not in VERSIONS:
        raise ValueError(f'version {version!r} is not supported; expected one of {VERSIONS}')
    lo, hi = SAMPLES_PER_SCENE_RANGE
    if not isinstance(samples_per_scene, int) or not lo <= samples_per_scene <= hi:
        raise ValueError(f'samples_per_scene={samples_per_scene!r} must be an integer in [{lo}, {hi}] '
                         '(>= 2 so that every annotation has a velocity)')
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f'seed={seed!r} must be a non-negative integer')
    if not isinstance(rig, RigSpec):
        raise TypeError(f'rig must be a RigSpec (see parse_rig), got {type(rig).__name__}')
    if rig_ranges is not None:
        rig_ranges = parse_rig_ranges(rig_ranges) if isinstance(rig_ranges, str) else check_rig_ranges(rig_ranges)
        both = [k for k in rig_ranges if getattr(rig, k) != getattr(RigSpec(), k)]
        if both:
            raise ValueError(f'--rig sets {", ".join(f"{k}={getattr(rig, k):g}" for k in both)} and --rig-ranges '
                             f'draws {", ".join(both)} per scene; give each key in only one of them (--rig fixes '
                             'the keys that --rig-ranges does not draw)')
    names = scene_names(version)
    rigs = {name: rig if rig_ranges is None else scene_rig(seed, version, name, rig_ranges, rig) for name in names}
    calibs = {name: build_calibration(image_scale, r) for name, r in rigs.items()}
    vis_calib = build_calibration(VISIBILITY_SCALE, RigSpec())
    annotated = version != 'v1.0-test'

    _remove_previous(out_dir, version)
    for sub in [version, 'maps'] + [f'samples/{ch}' for ch in CAMERAS + (LIDAR,)]:
        os.makedirs(osp.join(out_dir, sub), exist_ok=True)

    from tqdm import tqdm
    tables = {name: [] for name in TABLES}
    tables.update(_static_tables())
    jobs = [(seed, version, name, samples_per_scene, out_dir, calibs[name], vis_calib, annotated) for name in names]
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    with tqdm(total=len(names) * samples_per_scene, desc=f'synthetic {version}', unit='sample',
              disable=not progress) as bar, _pool(workers) as pool:
        for scene_tables in (pool.imap(_scene_job, jobs) if pool else map(_scene_job, jobs)):
            for key, records in scene_tables.items():
                tables[key].extend(records)
            bar.update(samples_per_scene)

    maps: Dict[str, List[str]] = {}
    for log in tables['log']:
        maps.setdefault(log['location'], []).append(log['token'])
    for location, log_tokens in sorted(maps.items()):
        token = make_token('map', location)
        filename = f'maps/{token}.png'
        Image.fromarray(_map_mask(location)).save(osp.join(out_dir, filename))
        tables['map'].append(dict(token=token, category='semantic_prior', filename=filename,
                                  log_tokens=log_tokens))
    for name in TABLES:
        with open(osp.join(out_dir, version, f'{name}.json'), 'w') as f:
            json.dump(tables[name], f, indent=0)
    if rig_ranges is None:
        record = asdict(rig)
    else:  # no top-level rig keys: a reader expecting one rig fails instead of reading the base
        record = dict(rig=asdict(rig), rig_ranges={k: list(v) for k, v in rig_ranges.items()},
                      scene_rigs={name: asdict(r) for name, r in rigs.items()})
    with open(osp.join(out_dir, RIG_FILE), 'w') as f:
        json.dump(dict(record, image_scale=image_scale, seed=seed, samples_per_scene=samples_per_scene,
                       version=version), f, indent=1)
    return dict(scenes=len(names), samples=len(tables['sample']),
                annotations=len(tables['sample_annotation']), instances=len(tables['instance']))


def _map_mask(location: str) -> np.ndarray:
    """A small placeholder semantic-prior mask (255 = drivable): a grid of streets."""
    mask = np.zeros((200, 200), np.uint8)
    offset = _seed_int('map', location) % 40
    for i in range(offset % 40, 200, 40):
        mask[i:i + 8] = 255
        mask[:, i:i + 8] = 255
    return mask


def save_preview(dataroot: str, png_path: str, version: str = 'v1.0-mini',
                 sample_token: Optional[str] = None) -> str:
    """Save the six camera views of one sample (default: the middle sample of the first scene)
    with the devkit's own projection of the GT boxes (``get_sample_data`` + ``Box.render``)
    drawn in black.  Uses matplotlib's Agg canvas only (no windows).  Returns the sample token."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from nuscenes import NuScenes

    nusc = NuScenes(version=version, dataroot=dataroot, verbose=False)
    if sample_token is None:
        scene = nusc.scene[0]
        sample_token = scene['first_sample_token']
        for _ in range(scene['nbr_samples'] // 2):
            sample_token = nusc.get('sample', sample_token)['next']
    sample = nusc.get('sample', sample_token)
    fig = Figure(figsize=(18, 7), dpi=100)
    FigureCanvasAgg(fig)
    for ax, ch in zip(fig.subplots(2, 3).flat, CAMERAS):
        path, boxes, intrinsic = nusc.get_sample_data(sample['data'][ch])
        image = np.asarray(Image.open(path))
        ax.imshow(image)
        for box in boxes:
            box.render(ax, view=intrinsic, normalize=True, colors=('k', 'k', 'k'), linewidth=0.8)
        ax.set_xlim(0, image.shape[1])
        ax.set_ylim(image.shape[0], 0)
        ax.set_title(f'{ch} ({len(boxes)} boxes)', fontsize=9)
        ax.axis('off')
    fig.suptitle(f'{version} sample {sample_token}', fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path)
    return sample_token
